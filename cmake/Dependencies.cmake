# Finds every third-party dependency once, for the whole tree.
#
# Two set-ups are supported:
#  * a Debian/Ubuntu machine with the packages of scripts/setup.sh installed system-wide, and
#  * an air-gapped GPU host where the same .deb files were unpacked with `dpkg -x` into DGRID_SYSROOT
#    (scripts/offline/build.sh). The sysroot's headers must win over torch's bundled copies (torch ships
#    its own fmt, which breaks spdlog), so they are put first.

include(CMakeFindDependencyMacro)
find_package(Threads REQUIRED)
find_package(PkgConfig)

set(_multiarch x86_64-linux-gnu)
if(DGRID_SYSROOT)
  get_filename_component(DGRID_SYSROOT "${DGRID_SYSROOT}" ABSOLUTE)
  message(STATUS "dgrid: using dependency sysroot ${DGRID_SYSROOT}")
  list(PREPEND CMAKE_PREFIX_PATH "${DGRID_SYSROOT}/usr" "${DGRID_SYSROOT}/usr/lib/${_multiarch}/cmake"
       "${DGRID_SYSROOT}/usr/share/cmake")
  list(PREPEND CMAKE_PROGRAM_PATH "${DGRID_SYSROOT}/usr/bin")
  include_directories(BEFORE SYSTEM "${DGRID_SYSROOT}/usr/include"
                      "${DGRID_SYSROOT}/usr/include/${_multiarch}")
  link_directories(BEFORE "${DGRID_SYSROOT}/usr/lib/${_multiarch}")
  set(ENV{PKG_CONFIG_PATH}
      "${DGRID_SYSROOT}/usr/lib/${_multiarch}/pkgconfig:${DGRID_SYSROOT}/usr/share/pkgconfig")
  set(ENV{PKG_CONFIG_SYSROOT_DIR} "${DGRID_SYSROOT}")
  set(CMAKE_BUILD_RPATH "${DGRID_SYSROOT}/usr/lib/${_multiarch}")
endif()

# abseil, protobuf, gRPC --------------------------------------------------------------------------
find_package(absl REQUIRED)
find_package(Protobuf REQUIRED)
find_package(gRPC CONFIG REQUIRED)
find_program(DGRID_PROTOC protoc REQUIRED)
find_program(DGRID_GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)
# Debian's gRPC config does not always bring libprotobuf onto the link line.
add_library(dgrid_grpc INTERFACE)
target_link_libraries(dgrid_grpc INTERFACE gRPC::grpc++ gRPC::grpc++_reflection ${Protobuf_LIBRARIES})
target_include_directories(dgrid_grpc SYSTEM INTERFACE ${Protobuf_INCLUDE_DIRS})

# Logging ------------------------------------------------------------------------------------------
find_package(fmt REQUIRED)
find_package(spdlog REQUIRED)

# JSON, HTTP, PNG ----------------------------------------------------------------------------------
find_package(nlohmann_json REQUIRED)
# Debian builds cpp-httplib as a compiled library (httplib.h declares, libcpp-httplib.so defines).
find_path(DGRID_HTTPLIB_INCLUDE httplib.h REQUIRED)
find_library(DGRID_HTTPLIB_LIB cpp-httplib)
add_library(dgrid_httplib INTERFACE)
target_include_directories(dgrid_httplib SYSTEM INTERFACE ${DGRID_HTTPLIB_INCLUDE})
if(DGRID_HTTPLIB_LIB)
  target_link_libraries(dgrid_httplib INTERFACE ${DGRID_HTTPLIB_LIB})
endif()
target_link_libraries(dgrid_httplib INTERFACE Threads::Threads)
# Debian compiles libcpp-httplib with OpenSSL (its cpp-httplib.pc sets CPPHTTPLIB_OPENSSL_SUPPORT):
# the same define here declares httplib::SSLServer, for the orchestrator's HTTPS.
find_package(OpenSSL REQUIRED)
target_compile_definitions(dgrid_httplib INTERFACE CPPHTTPLIB_OPENSSL_SUPPORT)
target_link_libraries(dgrid_httplib INTERFACE OpenSSL::SSL OpenSSL::Crypto)
find_package(PNG REQUIRED)
# libjpeg (Debian: libjpeg62-turbo-dev) for JPEG input images of image-to-image requests
# (common/input_image.h).
find_package(JPEG REQUIRED)
# FFmpeg's libraries for MP4 (H.264) output, optional: without them video output answers
# UNIMPLEMENTED (services/decoder/video_io.h). scripts/setup.sh installs them.
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(DGRID_FFMPEG QUIET IMPORTED_TARGET libavformat libavcodec libswscale libavutil)
endif()
if(DGRID_FFMPEG_FOUND)
  message(STATUS "FFmpeg ${DGRID_FFMPEG_libavcodec_VERSION}: MP4 output on")
else()
  message(STATUS "FFmpeg development packages not found: MP4 output off")
endif()
# libwebp (with its mux/demux libraries) for WebP output, optional in the same way
# (services/decoder/webp_io.h). scripts/setup.sh installs it.
if(PkgConfig_FOUND)
  pkg_check_modules(DGRID_WEBP QUIET IMPORTED_TARGET libwebp libwebpmux libwebpdemux)
endif()
if(DGRID_WEBP_FOUND)
  message(STATUS "libwebp ${DGRID_WEBP_libwebp_VERSION}: WebP output on")
else()
  message(STATUS "libwebp development package not found: WebP output off")
endif()

# UCX: Debian's CMake config hard-codes /usr/lib, so look the libraries up ourselves. -------------
find_path(DGRID_UCX_INCLUDE ucp/api/ucp.h REQUIRED)
find_library(DGRID_UCP_LIB ucp REQUIRED)
find_library(DGRID_UCT_LIB uct REQUIRED)
find_library(DGRID_UCS_LIB ucs REQUIRED)
add_library(dgrid_ucx INTERFACE)
target_include_directories(dgrid_ucx SYSTEM INTERFACE ${DGRID_UCX_INCLUDE})
target_link_libraries(dgrid_ucx INTERFACE ${DGRID_UCP_LIB} ${DGRID_UCT_LIB} ${DGRID_UCS_LIB})

# Gloo (CPU collectives over TCP) -----------------------------------------------------------------
find_path(DGRID_GLOO_INCLUDE gloo/context.h REQUIRED)
find_library(DGRID_GLOO_LIB gloo REQUIRED)
add_library(dgrid_gloo INTERFACE)
target_include_directories(dgrid_gloo SYSTEM INTERFACE ${DGRID_GLOO_INCLUDE})
target_link_libraries(dgrid_gloo INTERFACE ${DGRID_GLOO_LIB} Threads::Threads)

# SentencePiece --------------------------------------------------------------------------------------
find_path(DGRID_SENTENCEPIECE_INCLUDE sentencepiece_processor.h REQUIRED)
find_library(DGRID_SENTENCEPIECE_LIB sentencepiece REQUIRED)
add_library(dgrid_sentencepiece INTERFACE)
target_include_directories(dgrid_sentencepiece SYSTEM INTERFACE ${DGRID_SENTENCEPIECE_INCLUDE})
target_link_libraries(dgrid_sentencepiece INTERFACE ${DGRID_SENTENCEPIECE_LIB})

# LibTorch from a Python torch install ----------------------------------------------------------
if(NOT DGRID_PYTHON)
  if(EXISTS "${CMAKE_SOURCE_DIR}/.venv/bin/python3")
    set(DGRID_PYTHON "${CMAKE_SOURCE_DIR}/.venv/bin/python3")
  else()
    find_program(DGRID_PYTHON python3 REQUIRED)
  endif()
endif()
execute_process(
  COMMAND "${DGRID_PYTHON}" -c "import torch, sys; sys.stdout.write(torch.utils.cmake_prefix_path)"
  OUTPUT_VARIABLE DGRID_TORCH_PREFIX RESULT_VARIABLE _torch_rc ERROR_VARIABLE _torch_err)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR "dgrid: cannot import torch with ${DGRID_PYTHON}: ${_torch_err}")
endif()
list(APPEND CMAKE_PREFIX_PATH "${DGRID_TORCH_PREFIX}")
# Torch's config looks for the CUDA toolkit when the wheel was built with CUDA. It is only needed for
# compiling our own kernels; LibTorch itself runs on CPU-only machines.
find_package(Torch REQUIRED)
# The wheel's include folder also carries its own copies of protobuf (google/) and fmt (fmt/), older
# or newer than the Debian packages dgrid builds against; whichever comes first on the include path
# wins, and mixing them breaks the build. dgrid's code includes only ATen/c10 headers, which need
# neither, so LibTorch's include folder is seen through a view that leaves those two out.
get_filename_component(_torch_root "${DGRID_TORCH_PREFIX}/../.." ABSOLUTE)
set(_torch_inc "${_torch_root}/include")
set(DGRID_TORCH_INCLUDE_VIEW "${CMAKE_BINARY_DIR}/torch_include_view")
file(MAKE_DIRECTORY "${DGRID_TORCH_INCLUDE_VIEW}")
file(GLOB _torch_inc_entries RELATIVE "${_torch_inc}" "${_torch_inc}/*")
foreach(_entry ${_torch_inc_entries})
  if(NOT _entry MATCHES "^(google|fmt|pybind11)$")
    file(CREATE_LINK "${_torch_inc}/${_entry}" "${DGRID_TORCH_INCLUDE_VIEW}/${_entry}" SYMBOLIC)
  endif()
endforeach()
set(_torch_includes)
foreach(_dir ${TORCH_INCLUDE_DIRS})
  get_filename_component(_dir "${_dir}" ABSOLUTE)
  if(_dir STREQUAL _torch_inc)
    list(APPEND _torch_includes "${DGRID_TORCH_INCLUDE_VIEW}")
  else()
    string(REPLACE "${_torch_inc}" "${DGRID_TORCH_INCLUDE_VIEW}" _dir "${_dir}")
    list(APPEND _torch_includes "${_dir}")
  endif()
endforeach()
foreach(_t torch torch_cpu torch_cuda c10 c10_cuda torch_library)
  if(TARGET ${_t})
    set_property(TARGET ${_t} PROPERTY INTERFACE_INCLUDE_DIRECTORIES "")
  endif()
endforeach()
# TORCH_LIBRARIES carries the CUDA libraries with --no-as-needed where the wheel has them, so that
# LibTorch's CUDA kernels register even though dgrid code never names them.
add_library(dgrid_torch INTERFACE)
target_link_libraries(dgrid_torch INTERFACE ${TORCH_LIBRARIES})
target_include_directories(dgrid_torch SYSTEM INTERFACE ${_torch_includes})
get_filename_component(DGRID_TORCH_LIBDIR "${TORCH_LIBRARY}" DIRECTORY)
list(APPEND CMAKE_BUILD_RPATH "${DGRID_TORCH_LIBDIR}")

# CUDA and NCCL (optional) -------------------------------------------------------------------------
if(DGRID_WITH_CUDA)
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  if(NOT CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "52")
    set(CMAKE_CUDA_ARCHITECTURES 90a)
  endif()
  find_path(DGRID_NCCL_INCLUDE nccl.h REQUIRED)
  find_library(DGRID_NCCL_LIB nccl REQUIRED)
  add_library(dgrid_nccl INTERFACE)
  target_include_directories(dgrid_nccl SYSTEM INTERFACE ${DGRID_NCCL_INCLUDE})
  target_link_libraries(dgrid_nccl INTERFACE ${DGRID_NCCL_LIB} CUDA::cudart)
  target_compile_definitions(dgrid_nccl INTERFACE DGRID_WITH_NCCL=1)
endif()

# GoogleTest ---------------------------------------------------------------------------------------
if(DGRID_BUILD_TESTS)
  find_package(GTest REQUIRED)
  include(GoogleTest)
endif()
