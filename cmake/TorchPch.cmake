# Precompiled LibTorch headers (DGRID_PCH, default on).
#
# Nearly every translation unit that includes a LibTorch header spends most of its compile time
# parsing the same ATen headers. Here <ATen/ATen.h> is compiled once per kind of object (PIC for
# libraries, PIE for executables: GCC refuses a PCH made with the other) and reused, through
# REUSE_FROM, by each C++ file whose includes reach LibTorch. The files that never reach it (gRPC
# services, the planner, CLI plumbing) are left as they were, so that they do not pay for loading a
# header they do not use. With DGRID_PCH=OFF the compile lines are exactly those of a build without
# this file.
#
# Whether a file reaches LibTorch is read from its #include lines at configure time: a file does if
# it includes <ATen/...>, <torch/...> or <c10/...>, or includes, by a quoted path found under the
# source tree or beside the file, a header that does. Generated files (protobuf) never do.
option(DGRID_PCH "Precompile the ATen headers once and reuse them in every file that includes LibTorch"
       ON)

# _dgrid_reaches_torch(FILE OUT): OUT is ON when FILE's include closure reaches a LibTorch header.
# Answers are kept in global properties, so each header is read once per configure.
function(_dgrid_reaches_torch file out)
  get_property(known GLOBAL PROPERTY "DGRID_PCH_SCAN:${file}" SET)
  if(known)
    get_property(value GLOBAL PROPERTY "DGRID_PCH_SCAN:${file}")
    set(${out} ${value} PARENT_SCOPE)
    return()
  endif()
  set_property(GLOBAL PROPERTY "DGRID_PCH_SCAN:${file}" OFF)  # an include cycle ends here
  file(STRINGS "${file}" lines REGEX "^[ \t]*#[ \t]*include[ \t]*[<\"]")
  get_filename_component(dir "${file}" DIRECTORY)
  set(result OFF)
  foreach(line IN LISTS lines)
    if(line MATCHES "<(ATen|torch|c10)/")
      set(result ON)
      break()
    endif()
    if(line MATCHES "\"([^\"]+)\"")
      set(include "${CMAKE_MATCH_1}")
      set(path "")
      if(EXISTS "${PROJECT_SOURCE_DIR}/${include}")
        set(path "${PROJECT_SOURCE_DIR}/${include}")
      elseif(EXISTS "${dir}/${include}")
        set(path "${dir}/${include}")
      endif()
      if(path)
        get_filename_component(path "${path}" REALPATH)
        _dgrid_reaches_torch("${path}" sub)
        if(sub)
          set(result ON)
          break()
        endif()
      endif()
    endif()
  endforeach()
  set_property(GLOBAL PROPERTY "DGRID_PCH_SCAN:${file}" ${result})
  set(${out} ${result} PARENT_SCOPE)
endfunction()

# dgrid_use_torch_pch(): gives every C++ target defined so far (in this folder and below) the
# precompiled header, its files that do not reach LibTorch excepted. Called once, after
# every add_subdirectory of the top-level CMakeLists.txt.
function(dgrid_use_torch_pch)
  if(NOT DGRID_PCH)
    return()
  endif()
  set(header "${PROJECT_SOURCE_DIR}/cmake/torch_pch.h")
  set(stub "${PROJECT_SOURCE_DIR}/cmake/torch_pch.cc")
  add_library(dgrid_torch_pch_pic OBJECT "${stub}")
  set_target_properties(dgrid_torch_pch_pic PROPERTIES POSITION_INDEPENDENT_CODE ON)
  add_library(dgrid_torch_pch_pie OBJECT "${stub}")
  set_target_properties(dgrid_torch_pch_pie PROPERTIES POSITION_INDEPENDENT_CODE OFF)
  target_compile_options(dgrid_torch_pch_pie PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-fPIE>)
  foreach(pch dgrid_torch_pch_pic dgrid_torch_pch_pie)
    target_compile_options(${pch} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-pthread>)
    target_link_libraries(${pch} PRIVATE dgrid_torch)
    target_precompile_headers(${pch} PRIVATE "${header}")
  endforeach()
  set(dirs "${PROJECT_SOURCE_DIR}")
  set(count 0)
  while(dirs)
    list(POP_FRONT dirs dir)
    get_property(subdirs DIRECTORY "${dir}" PROPERTY SUBDIRECTORIES)
    list(APPEND dirs ${subdirs})
    get_property(targets DIRECTORY "${dir}" PROPERTY BUILDSYSTEM_TARGETS)
    foreach(target IN LISTS targets)
      get_target_property(type ${target} TYPE)
      if(NOT type MATCHES "^(STATIC_LIBRARY|SHARED_LIBRARY|MODULE_LIBRARY|OBJECT_LIBRARY|EXECUTABLE)$"
         OR target MATCHES "^dgrid_torch_pch_")
        continue()
      endif()
      # Sanitizer builds (the fuzz drivers) cannot use a PCH made without the sanitizer.
      get_target_property(options ${target} COMPILE_OPTIONS)
      if(options MATCHES "-fsanitize")
        continue()
      endif()
      get_target_property(sources ${target} SOURCES)
      get_target_property(source_dir ${target} SOURCE_DIR)
      set(with)
      set(without)
      foreach(source IN LISTS sources)
        if(source MATCHES "\\.cu$")
          list(APPEND without "${source}")  # nvcc's files: the PCH is a host C++ one
        endif()
        if(NOT source MATCHES "\\.(cc|cpp|cxx)$" OR source MATCHES "^\\$<")
          continue()
        endif()
        if(NOT IS_ABSOLUTE "${source}")
          set(source "${source_dir}/${source}")
        endif()
        set(reaches OFF)
        if(EXISTS "${source}")
          _dgrid_reaches_torch("${source}" reaches)
        endif()
        if(reaches)
          list(APPEND with "${source}")
        else()
          list(APPEND without "${source}")
        endif()
      endforeach()
      if(NOT with)
        continue()
      endif()
      # -pthread defines _REENTRANT, which the PCH must agree on; most targets have it already
      # (through gRPC and abseil). CMake adds -Winvalid-pch, so a PCH that GCC finds but cannot use
      # is a warning in the build log, not a silent slow compile.
      target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-pthread>)
      if(type STREQUAL "EXECUTABLE")
        target_precompile_headers(${target} REUSE_FROM dgrid_torch_pch_pie)
      else()
        target_precompile_headers(${target} REUSE_FROM dgrid_torch_pch_pic)
      endif()
      if(without)
        set_source_files_properties(${without} DIRECTORY "${source_dir}"
                                    PROPERTIES SKIP_PRECOMPILE_HEADERS ON)
      endif()
      math(EXPR count "${count} + 1")
    endforeach()
  endwhile()
  message(STATUS "dgrid: precompiled ATen headers reused by ${count} targets (DGRID_PCH=ON)")
endfunction()
