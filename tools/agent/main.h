// `tpmkey agent`: options, the environment it prints, daemonizing, -k, and running a command
// under the agent. docs/ssh.md.
#pragma once

namespace tpmkey::agent {

// argv[0] is "agent"; the rest are its options (the CLI's --tcti and --keystore included).
int agent_main(int argc, char** argv);
// Its --help text (also "tpmkey help agent").
extern const char kAgentHelp[];

}  // namespace tpmkey::agent
