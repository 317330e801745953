// Video jobs: the asynchronous shape of OpenAI's Videos API (POST /v1/videos answers at once with a
// job; the client polls it and downloads the MP4 when it is completed) over the same Pipeline the
// gRPC and image endpoints use. http_server.cc parses the HTTP side; this class keeps the jobs.
//
// A job is one pipeline request whose id is the job id ("video_" + 24 hex digits). Its status
// follows the request's events: queued (accepted, waiting for a stage) -> in_progress (encoded;
// progress follows the denoising steps) -> completed (the result's bytes are kept) or failed (the
// request's error code and message). Every accepted job ends completed or failed; none is dropped
// while it runs.
//
// Bounds: at most max_jobs jobs are kept. A finished job is kept `retention` after it finished
// (expires_at), then forgotten; when the table is full the oldest finished job goes first, and with
// max_jobs jobs still running Create answers RESOURCE_EXHAUSTED. Delete cancels a running job.
//
// Threads: every method is thread-safe. The pipeline must outlive the jobs it runs; the job table
// itself lives as long as any running request's observer holds it.
#ifndef DGRID_ORCHESTRATOR_API_VIDEO_JOBS_H_
#define DGRID_ORCHESTRATOR_API_VIDEO_JOBS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "dgrid/v1/generation.pb.h"

namespace dgrid::orchestrator {

class Pipeline;

// What GET /v1/videos/{id} reports (OpenAI's Video object, plus dgrid's effective parameters).
struct VideoJobView {
  std::string id;
  std::string model;
  std::string prompt;
  std::string status;  // "queued", "in_progress", "completed" or "failed"
  int progress = 0;    // 0..100
  int64_t created_at = 0;
  int64_t completed_at = 0;  // 0 while running
  int64_t expires_at = 0;    // 0 while running
  std::string seconds;       // playback length, "5" for 81 frames at 16 fps
  std::string size;          // "WIDTHxHEIGHT"
  int num_frames = 0;
  int fps = 0;
  uint64_t seed = 0;
  std::string error_code;  // failed: lower-case gRPC code name ("invalid_argument", ...)
  std::string error_message;
};

struct VideoJobsOptions {
  size_t max_jobs = 256;
  absl::Duration retention = absl::Hours(1);
};

class VideoJobs {
 public:
  // `pipeline` is not owned and must outlive every job submitted through this object.
  explicit VideoJobs(Pipeline* pipeline, VideoJobsOptions options = {});
  ~VideoJobs();

  // Submits `request` (its request_id is replaced by the job id; an unset output format means MP4)
  // and returns the new job. The pipeline's own refusals (INVALID_ARGUMENT naming the field,
  // NOT_FOUND, RESOURCE_EXHAUSTED, UNAVAILABLE) come back as they are and leave no job.
  absl::StatusOr<VideoJobView> Create(dgrid::v1::GenerateRequest request);

  // NOT_FOUND for an unknown, deleted or expired id.
  absl::StatusOr<VideoJobView> Get(absl::string_view id) const;
  // The MP4 of a completed job; FAILED_PRECONDITION naming the status while it is not completed.
  absl::StatusOr<std::string> Content(absl::string_view id) const;
  // Newest first (or oldest first with ascending), starting after the job `after` (empty: from the
  // start; NOT_FOUND when it is unknown), at most `limit`. *has_more says whether more follow.
  absl::StatusOr<std::vector<VideoJobView>> List(bool ascending, absl::string_view after,
                                                 size_t limit, bool* has_more) const;
  // Forgets the job, cancelling it first while it runs. NOT_FOUND for an unknown id.
  absl::Status Delete(absl::string_view id);

  struct State;  // shared with the running requests' observers (video_jobs.cc)

 private:
  Pipeline* const pipeline_;
  const VideoJobsOptions options_;
  std::shared_ptr<State> state_;
};

}  // namespace dgrid::orchestrator

#endif  // DGRID_ORCHESTRATOR_API_VIDEO_JOBS_H_
