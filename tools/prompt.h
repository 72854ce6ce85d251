// Reading passwords: from the terminal without echo, or from a file.
#pragma once

#include <string>

#include "keystore/error.h"
#include "keystore/ossl.h"

namespace tpmkey::cli {

// Prompts on /dev/tty with echo off. `confirm` asks twice and requires both to match.
Result<SecretBytes> prompt_password(const std::string& prompt, bool confirm);
// Whether this process has a controlling terminal to ask questions on.
bool have_tty();
// Asks a yes/no question on /dev/tty; false when there is no terminal.
bool confirm_on_tty(const std::string& question);

}  // namespace tpmkey::cli
