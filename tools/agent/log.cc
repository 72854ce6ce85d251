#include "tools/agent/log.h"

#include <syslog.h>

#include <cstdio>

namespace tpmkey::agent {
namespace {
LogSink g_sink;
}

void set_log(LogSink sink) {
  g_sink = sink;
  if (sink.to_syslog) openlog("tpmkey-agent", LOG_PID, LOG_AUTH);
}

void log(LogLevel level, const std::string& line) {
  if (level > g_sink.max) return;
  if (g_sink.to_syslog) {
    syslog(level == LogLevel::kError ? LOG_ERR : level == LogLevel::kInfo ? LOG_INFO : LOG_DEBUG, "%s", line.c_str());
  } else {
    std::fprintf(stderr, "tpmkey agent: %s\n", line.c_str());
  }
}

}  // namespace tpmkey::agent
