// The agent's log: stderr in the foreground (-D, -d), syslog (LOG_AUTH) once daemonized. Lines
// name keys and fingerprints, never secrets (docs/ssh.md).
#pragma once

#include <string>

namespace tpmkey::agent {

enum class LogLevel { kError, kInfo, kDebug };

struct LogSink {
  bool to_syslog = false;
  LogLevel max = LogLevel::kInfo;
};
void set_log(LogSink sink);
void log(LogLevel level, const std::string& line);
inline void log_error(const std::string& line) { log(LogLevel::kError, line); }
inline void log_info(const std::string& line) { log(LogLevel::kInfo, line); }
inline void log_debug(const std::string& line) { log(LogLevel::kDebug, line); }

}  // namespace tpmkey::agent
