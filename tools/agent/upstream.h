// Another agent behind this one (-A SOCKET): the keys it holds are listed after the agent's own
// and signed by it. One connection per request, so a restarted upstream agent is simply used again.
#pragma once

#include <string>

#include "keystore/error.h"
#include "keystore/ossl.h"

namespace tpmkey::agent {

// Sends one request message (type byte first) and returns the response message, within `timeout_ms`.
Result<Bytes> ask_upstream(const std::string& socket, const Bytes& message, int timeout_ms = 5000);

}  // namespace tpmkey::agent
