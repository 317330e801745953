#include "orchestrator/api/video_jobs.h"

#include <algorithm>
#include <map>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "orchestrator/pipeline/pipeline.h"

namespace dgrid::orchestrator {

namespace {

struct Job {
  VideoJobView view;
  uint64_t sequence = 0;  // creation order, for listing
  bool finished = false;
  absl::Time finished_time;
  std::string content;  // the MP4, once completed
};

// "5" for 80 / 16, "2.5" for 40 / 16: the playback length of frames 0..N-1 at fps, as the
// frames-from-seconds rule (seconds x fps + 1 frames) reads back.
std::string SecondsLabel(int num_frames, int fps) {
  if (fps <= 0) return "0";
  const double seconds = static_cast<double>(std::max(num_frames - 1, 0)) / fps;
  std::string text = absl::StrFormat("%.3f", seconds);
  while (!text.empty() && text.back() == '0') text.pop_back();
  if (!text.empty() && text.back() == '.') text.pop_back();
  return text;
}

}  // namespace

struct VideoJobs::State {
  mutable absl::Mutex mutex;
  std::map<std::string, Job, std::less<>> jobs ABSL_GUARDED_BY(mutex);
  uint64_t next_sequence ABSL_GUARDED_BY(mutex) = 0;
  absl::Duration retention;

  // Drops finished jobs past their expiry; then, while more than `limit` jobs remain, the oldest
  // finished ones. Running jobs are never dropped.
  void Trim(size_t limit, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex) {
    for (auto it = jobs.begin(); it != jobs.end();) {
      if (it->second.finished && now >= it->second.finished_time + retention) {
        it = jobs.erase(it);
      } else {
        ++it;
      }
    }
    while (jobs.size() > limit) {
      auto oldest = jobs.end();
      for (auto it = jobs.begin(); it != jobs.end(); ++it) {
        if (!it->second.finished) continue;
        if (oldest == jobs.end() || it->second.finished_time < oldest->second.finished_time) {
          oldest = it;
        }
      }
      if (oldest == jobs.end()) return;  // every job is still running
      jobs.erase(oldest);
    }
  }

  size_t Running() const ABSL_SHARED_LOCKS_REQUIRED(mutex) {
    size_t n = 0;
    for (const auto& [id, job] : jobs) n += !job.finished;
    return n;
  }

  const Job* Find(absl::string_view id, absl::Time now) const ABSL_SHARED_LOCKS_REQUIRED(mutex) {
    auto it = jobs.find(id);
    if (it == jobs.end()) return nullptr;
    if (it->second.finished && now >= it->second.finished_time + retention) return nullptr;
    return &it->second;
  }
};

namespace {

// Follows one job's request and writes its progress into the shared table.
class JobObserver : public RequestObserver {
 public:
  JobObserver(std::shared_ptr<VideoJobs::State> state, std::string id)
      : state_(std::move(state)), id_(std::move(id)) {}

  void OnEvent(const dgrid::v1::GenerateEvent& event) override {
    absl::MutexLock lock(&state_->mutex);
    auto it = state_->jobs.find(id_);
    if (it == state_->jobs.end()) return;  // deleted meanwhile
    Job& job = it->second;
    VideoJobView& v = job.view;
    switch (event.event_case()) {
      case dgrid::v1::GenerateEvent::kAccepted: {
        const dgrid::v1::Accepted& a = event.accepted();
        v.model = a.model();
        v.size = absl::StrCat(a.width(), "x", a.height());
        v.num_frames = a.num_frames();
        v.fps = a.fps();
        v.seed = a.seed();
        v.seconds = SecondsLabel(a.num_frames(), a.fps());
        break;
      }
      case dgrid::v1::GenerateEvent::kEncoded:
        v.status = "in_progress";
        v.progress = std::max(v.progress, 5);
        break;
      case dgrid::v1::GenerateEvent::kStep: {
        // Denoising is most of the work: steps map onto 5..90%.
        const dgrid::v1::DenoiseStep& s = event.step();
        v.status = "in_progress";
        if (s.total() > 0) v.progress = std::max(v.progress, 5 + 85 * s.step() / s.total());
        break;
      }
      case dgrid::v1::GenerateEvent::kDecoded:
        v.progress = std::max(v.progress, 95);
        break;
      case dgrid::v1::GenerateEvent::kResult: {
        const dgrid::v1::GenerateResult& r = event.result();
        job.content = r.has_video() ? r.video().data() : r.image().data();
        break;
      }
      default:
        break;
    }
  }

  void OnDone(const absl::Status& status) override {
    absl::MutexLock lock(&state_->mutex);
    auto it = state_->jobs.find(id_);
    if (it == state_->jobs.end()) return;
    Job& job = it->second;
    job.finished = true;
    job.finished_time = absl::Now();
    VideoJobView& v = job.view;
    v.completed_at = absl::ToUnixSeconds(job.finished_time);
    v.expires_at = absl::ToUnixSeconds(job.finished_time + state_->retention);
    if (status.ok()) {
      v.status = "completed";
      v.progress = 100;
    } else {
      v.status = "failed";
      job.content.clear();
      v.error_code = absl::AsciiStrToLower(absl::StatusCodeToString(status.code()));
      v.error_message = std::string(status.message());
    }
  }

 private:
  const std::shared_ptr<VideoJobs::State> state_;
  const std::string id_;
};

std::string NewJobId() {
  static absl::Mutex mutex(absl::kConstInit);
  static absl::BitGen* gen = new absl::BitGen();
  absl::MutexLock lock(&mutex);
  return absl::StrFormat("video_%016x%08x", absl::Uniform<uint64_t>(*gen),
                         absl::Uniform<uint32_t>(*gen));
}

}  // namespace

VideoJobs::VideoJobs(Pipeline* pipeline, VideoJobsOptions options)
    : pipeline_(pipeline), options_(options), state_(std::make_shared<State>()) {
  state_->retention = options_.retention;
}

VideoJobs::~VideoJobs() = default;

absl::StatusOr<VideoJobView> VideoJobs::Create(dgrid::v1::GenerateRequest request) {
  const std::string id = NewJobId();
  request.set_request_id(id);
  if (request.output_format() == dgrid::v1::OUTPUT_FORMAT_UNSPECIFIED) {
    request.set_output_format(dgrid::v1::OUTPUT_FORMAT_MP4);
  }
  const absl::Time now = absl::Now();
  {
    absl::MutexLock lock(&state_->mutex);
    if (state_->Running() >= options_.max_jobs) {
      return absl::ResourceExhaustedError(
          absl::StrCat("video jobs: ", options_.max_jobs, " are running; try again later"));
    }
    Job job;
    job.sequence = state_->next_sequence++;
    job.view.id = id;
    job.view.model = request.model();
    job.view.prompt = request.prompt();
    job.view.status = "queued";
    job.view.created_at = absl::ToUnixSeconds(now);
    state_->jobs.emplace(id, std::move(job));
  }
  // The job is in the table before the request can report anything. A refused request takes it
  // out again; only an accepted one makes room by dropping finished jobs.
  absl::StatusOr<std::string> submitted =
      pipeline_->Submit(request, absl::InfiniteFuture(), std::make_shared<JobObserver>(state_, id));
  absl::MutexLock lock(&state_->mutex);
  if (!submitted.ok()) {
    state_->jobs.erase(id);
    return submitted.status();
  }
  auto it = state_->jobs.find(id);
  if (it == state_->jobs.end()) return absl::NotFoundError(absl::StrCat("video ", id, ": deleted"));
  VideoJobView view = it->second.view;
  state_->Trim(options_.max_jobs, absl::Now());
  return view;
}

absl::StatusOr<VideoJobView> VideoJobs::Get(absl::string_view id) const {
  absl::MutexLock lock(&state_->mutex);
  const Job* job = state_->Find(id, absl::Now());
  if (job == nullptr) return absl::NotFoundError(absl::StrCat("video_id: no video '", id, "'"));
  return job->view;
}

absl::StatusOr<std::string> VideoJobs::Content(absl::string_view id) const {
  absl::MutexLock lock(&state_->mutex);
  const Job* job = state_->Find(id, absl::Now());
  if (job == nullptr) return absl::NotFoundError(absl::StrCat("video_id: no video '", id, "'"));
  if (job->view.status != "completed") {
    return absl::FailedPreconditionError(absl::StrCat(
        "video ", id, " is ", job->view.status,
        job->view.status == "failed" ? "" : "; poll GET /v1/videos/{id} until completed"));
  }
  return job->content;
}

absl::StatusOr<std::vector<VideoJobView>> VideoJobs::List(bool ascending, absl::string_view after,
                                                          size_t limit, bool* has_more) const {
  absl::MutexLock lock(&state_->mutex);
  const absl::Time now = absl::Now();
  std::vector<const Job*> all;
  for (const auto& [id, job] : state_->jobs) {
    if (state_->Find(id, now) != nullptr) all.push_back(&job);
  }
  std::sort(all.begin(), all.end(), [ascending](const Job* a, const Job* b) {
    return ascending ? a->sequence < b->sequence : a->sequence > b->sequence;
  });
  size_t start = 0;
  if (!after.empty()) {
    auto it =
        std::find_if(all.begin(), all.end(), [&](const Job* j) { return j->view.id == after; });
    if (it == all.end()) return absl::NotFoundError(absl::StrCat("after: no video '", after, "'"));
    start = static_cast<size_t>(it - all.begin()) + 1;
  }
  std::vector<VideoJobView> out;
  for (size_t i = start; i < all.size() && out.size() < limit; ++i) out.push_back(all[i]->view);
  *has_more = start + out.size() < all.size();
  return out;
}

absl::Status VideoJobs::Delete(absl::string_view id) {
  bool running = false;
  {
    absl::MutexLock lock(&state_->mutex);
    const Job* job = state_->Find(id, absl::Now());
    if (job == nullptr) return absl::NotFoundError(absl::StrCat("video_id: no video '", id, "'"));
    running = !job->finished;
    state_->jobs.erase(state_->jobs.find(id));
  }
  // A request that finished meanwhile is NOT_FOUND to the pipeline: nothing left to stop.
  if (running) pipeline_->Cancel(id).IgnoreError();
  return absl::OkStatus();
}

}  // namespace dgrid::orchestrator
