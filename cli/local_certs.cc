#include "cli/local_certs.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/files.h"
#include "common/status.h"

namespace dgrid::cli {
namespace {

// Runs `openssl args...`, output to `log`; UNAVAILABLE with the log's text when it fails.
absl::Status RunOpenssl(const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> storage = {"openssl"};
  storage.insert(storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : storage) argv.push_back(a.data());
  argv.push_back(nullptr);
  const int log_fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (log_fd < 0) return ErrnoStatus(errno, "open " + log);
  const pid_t pid = fork();
  if (pid < 0) {
    close(log_fd);
    return ErrnoStatus(errno, "fork");
  }
  if (pid == 0) {
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    execvp("openssl", argv.data());
    std::fprintf(stderr, "cannot run openssl: %s\n", strerror(errno));
    _exit(127);
  }
  close(log_fd);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return absl::OkStatus();
  absl::StatusOr<std::string> output = ReadFileToString(log);
  return Unavailable("openssl ", absl::StrJoin(args, " "), " failed:\n",
                     output.ok() ? *output : "(no output)");
}

bool IsIpAddress(const std::string& host) {
  unsigned char buffer[16];
  return inet_pton(AF_INET, host.c_str(), buffer) == 1 ||
         inet_pton(AF_INET6, host.c_str(), buffer) == 1;
}

}  // namespace

absl::StatusOr<LocalCertificates> MakeLocalCertificates(const std::string& dir,
                                                        const std::vector<std::string>& hosts) {
  mkdir(dir.c_str(), 0700);
  if (!IsDirectory(dir)) return NotFound("tls: cannot create ", dir);
  LocalCertificates out{JoinPath(dir, "ca.crt"), JoinPath(dir, "node.crt"),
                        JoinPath(dir, "node.key")};
  const std::string ca_key = JoinPath(dir, "ca.key");
  const std::string csr = JoinPath(dir, "node.csr");
  const std::string ext = JoinPath(dir, "node.ext");
  const std::string log = JoinPath(dir, "openssl.log");

  std::vector<std::string> sans = {"DNS:localhost", "IP:127.0.0.1"};
  for (const std::string& host : hosts) {
    if (host.empty() || host == "localhost" || host == "127.0.0.1" || host == "0.0.0.0") continue;
    sans.push_back(absl::StrCat(IsIpAddress(host) ? "IP:" : "DNS:", host));
  }
  const std::string extensions =
      absl::StrCat("basicConstraints=critical,CA:FALSE\n", "keyUsage=critical,digitalSignature\n",
                   "extendedKeyUsage=serverAuth,clientAuth\n",
                   "subjectAltName=", absl::StrJoin(sans, ","), "\n");
  FILE* f = std::fopen(ext.c_str(), "w");
  if (f == nullptr) return ErrnoStatus(errno, "write " + ext);
  std::fputs(extensions.c_str(), f);
  std::fclose(f);
  const std::vector<std::string> ec = {"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                                       "-nodes"};
  std::vector<std::string> make_ca = {"req", "-x509"};
  make_ca.insert(make_ca.end(), ec.begin(), ec.end());
  make_ca.insert(make_ca.end(),
                 {"-keyout", ca_key, "-out", out.ca_file, "-days", "30", "-subj",
                  "/CN=dgrid local CA", "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
                  "keyUsage=critical,keyCertSign,cRLSign"});
  RETURN_IF_ERROR(RunOpenssl(make_ca, log));
  std::vector<std::string> make_csr = {"req"};
  make_csr.insert(make_csr.end(), ec.begin(), ec.end());
  make_csr.insert(make_csr.end(),
                  {"-keyout", out.key_file, "-out", csr, "-subj", "/CN=dgrid node"});
  RETURN_IF_ERROR(RunOpenssl(make_csr, log));
  RETURN_IF_ERROR(
      RunOpenssl({"x509", "-req", "-in", csr, "-CA", out.ca_file, "-CAkey", ca_key,
                  "-CAcreateserial", "-out", out.cert_file, "-days", "30", "-extfile", ext},
                 log));
  return out;
}

}  // namespace dgrid::cli
