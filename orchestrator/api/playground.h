// The playground page the orchestrator's HTTP port serves at / (api/playground.html, compiled in by
// cmake/EmbedFile.cmake): one static HTML file with its script and style, no external resources.
#ifndef DGRID_ORCHESTRATOR_API_PLAYGROUND_H_
#define DGRID_ORCHESTRATOR_API_PLAYGROUND_H_

#include <string_view>

namespace dgrid::orchestrator {

std::string_view PlaygroundHtml();

// The Content-Security-Policy the page is served with: its own inline script and style, requests
// to this origin only, images from data: and blob: URLs, video from blob: URLs.
inline constexpr std::string_view kPlaygroundContentSecurityPolicy =
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

}  // namespace dgrid::orchestrator

#endif  // DGRID_ORCHESTRATOR_API_PLAYGROUND_H_
