// The broker: a one-shot process signs through a running tpmkey agent, which already holds the
// TPM connection, the salted session and the loaded key (docs/sessions.md#when-an-agent-runs).
// One protocol: the ssh-agent protocol with the extension "sign-digest@tpmkey"
// (docs/ssh.md#the-sign-digest-extension). The client side is here; the agent's parser is in
// tools/agent/agent.cc.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "keystore/algorithm.h"
#include "keystore/keyfile.h"
#include "keystore/ossl.h"

namespace tpmkey {

class Context;

inline constexpr std::string_view kSignDigestExtension = "sign-digest@tpmkey";
// Asks whether the agent would sign with a key now (docs/ssh.md#the-sign-digest-extension).
inline constexpr std::string_view kHoldsKeyExtension = "holds-key@tpmkey";

// The socket `tpmkey agent` listens on by default: $XDG_RUNTIME_DIR/tpmkey/agent.sock (when that
// is a directory), else /tmp/tpmkey-UID/agent.sock.
std::string default_agent_socket();

// The request's scheme and hash names ("ecdsa", "rsassa", "rsa-pss"; "sha1", "sha256", "sha384",
// "sha512"), and the scheme they name (nullopt for names the protocol does not have).
std::string_view scheme_wire_name(SigAlg alg);
std::string_view hash_wire_name(TPM2_ALG_ID hash);
std::optional<SignScheme> scheme_from_wire(std::string_view scheme, std::string_view hash);

// What tells two key files of the same public key apart: SHA-256 over the parent, the persistent
// handle and the TPM-wrapped private blob. The request names a key by its OpenSSH public key
// blob and this.
Bytes key_file_id(const KeyFile& kf, OSSL_LIB_CTX* libctx);

// The request message (its type byte first, without the frame's length).
Bytes sign_digest_request(const Bytes& key_blob, const Bytes& file_id, const SignScheme& scheme,
                          const uint8_t* digest, size_t len);

// One request message (its type byte first) and the agent's answer over a new connection to the
// socket at `path`, within `timeout`; the answer or why there is none. It checks the peer's
// credentials (the user's or root's, not this process), not the socket's path: agent_for in
// broker.cc does that first.
Result<Bytes> agent_exchange(const std::string& path, const Bytes& message, std::chrono::milliseconds timeout);

// Asks the agent the settings name (ctx.settings().agent) to sign `digest` with the key of `kf`,
// whose public half is `pub`. Returns the signature in Key::sign's form once it verifies against
// `pub`; otherwise why the agent did not sign, which is every reason to sign directly instead
// (agent off or absent, its socket or directory writable by others or not the user's, a peer of
// another uid, key not held, agent locked, timeout, a signature that does not verify), or to
// fail under agent-required. With TPMKEY_DEBUG set the outcome is written to stderr.
Result<Bytes> broker_sign(Context& ctx, const KeyFile& kf, EVP_PKEY* pub, const SignScheme& scheme,
                          const uint8_t* digest, size_t len);

// Whether that agent would sign with the key of `kf` now (it holds it, unlocked, with its
// password if it has one): a provider loading a password key asks this before it prompts for the
// password. False for every reason broker_sign would not ask the agent.
bool broker_holds(Context& ctx, const KeyFile& kf);

}  // namespace tpmkey
