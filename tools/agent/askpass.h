// Confirmation before a key with the confirm constraint (ssh-add -c) is used: runs the askpass
// program as OpenSSH's agent does (SSH_ASKPASS_PROMPT=confirm). Exit status 0 with an empty answer
// or "yes" allows; anything else, a missing program, or no answer within the time limit denies.
#pragma once

#include <string>

namespace tpmkey::agent {

// The program to run: `configured`, else $SSH_ASKPASS, else /usr/bin/ssh-askpass.
std::string askpass_program(const std::string& configured);
bool ask_confirmation(const std::string& program, const std::string& prompt, int timeout_s = 120);

}  // namespace tpmkey::agent
