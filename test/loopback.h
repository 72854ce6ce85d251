// Test support: loopback TCP ports and sockets, for swtpm, the bus proxy and the silent TPM.
#pragma once

#include <netinet/in.h>

#include <cstddef>
#include <cstdint>

namespace tpmkey::test {

// Ports for swtpm and proxies: 10000-31999, below Linux's ephemeral range (32768+), where
// TIME_WAIT leftovers of client connections would make a bind fail. A pair is an even port (the
// data channel) and the next one (the control channel).
inline constexpr int kPortBase = 10000, kPortPairs = 11000;

sockaddr_in loopback(int port);
// Whether `port` on 127.0.0.1 can be bound now, and whether something accepts connections there.
bool port_free(int port);
bool can_connect(int port);
// A connected or listening socket (close-on-exec), or -1.
int connect_loopback(int port);
int listen_loopback(int port);
// Reads or writes exactly `n` bytes; false on end of file or error.
bool read_full(int fd, uint8_t* p, size_t n);
bool write_full(int fd, const uint8_t* p, size_t n);

}  // namespace tpmkey::test
