// Test support, the one header the tests include. Each part has its own file:
//   process.h          running commands (CommandResult, EXPECT_OK, EXPECT_FAILS_WITH), temp dirs, files
//   loopback.h         loopback ports and sockets
//   swtpm.h            the private swtpm per test binary, the TPM handle check, SilentTpm
//   bus_proxy.h        BusProxy, a man in the middle on the TPM bus
//   abrmd.h            tpm2-abrmd on a private D-Bus
//   openssl_support.h  openssl.cnf, library contexts, keys, signatures, digests, errors
//   sshd.h             a real OpenSSH server on loopback, the ssh client for it
//   agent_process.h    a tpmkey agent process, ssh-add against it, a raw protocol client
// The fixture base for swtpm tests (TpmTest) is in fixture.h.
#pragma once

#include "test/abrmd.h"
#include "test/agent_process.h"
#include "test/bus_proxy.h"
#include "test/loopback.h"
#include "test/openssl_support.h"
#include "test/process.h"
#include "test/sshd.h"
#include "test/swtpm.h"
