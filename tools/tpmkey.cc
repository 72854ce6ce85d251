// tpmkey: the command line. Parses arguments (one option table per command), asks for passwords
// and passphrases and for confirmation, prints, and maps results to exit codes 0 (done), 1
// (failed), 2 (usage error).
// What the commands do lives in the core (keystore/manage.h).
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "keystore/context.h"
#include "keystore/files.h"
#include "keystore/key.h"
#include "keystore/manage.h"
#include "keystore/private_key.h"
#include "keystore/public_key.h"
#include "keystore/uri.h"
#include "keystore/wrap.h"
#include "tools/agent/main.h"
#include "tools/prompt.h"

namespace tpmkey::cli {
namespace {

constexpr int kExitOk = 0, kExitError = 1, kExitUsage = 2;

const char* kMainHelp = R"(Usage: tpmkey [--tcti TCTI] [--keystore DIR] COMMAND [ARGS]

Keys that never leave the TPM, for OpenSSL, TLS and SSH.

Commands:
  init             pin this TPM's storage root key (and make it persistent)
  create NAME      generate a key inside the TPM and store it as NAME
  list             list the keys in the keystore
  pubkey NAME      print a key's public key (PEM or OpenSSH)
  delete NAME      delete a key from the keystore
  passwd NAME      change, set or remove a key's password
  import NAME FILE
                   move an existing RSA or EC private key (PEM or DER: PKCS#1,
                   SEC1, PKCS#8, encrypted or not) into the TPM, stored as NAME
  import-file NAME PATH
                   add an existing TSS2 key file (tpm2-openssl, tpm2-tools, ...)
                   to the keystore as NAME, after checking that this TPM loads it
  algorithms       show which key algorithms this TPM supports
  srk [--out FILE] export this TPM's storage root key, for "tpmkey wrap" elsewhere
  wrap --parent SRK-FILE --from KEY --out FILE
                   wrap a private key for another machine's TPM (no TPM needed);
                   "tpmkey import NAME FILE" there brings it in
  agent            an ssh-agent serving the keystore's keys (and ssh-add'ed
                   ones); "tpmkey agent --help" and docs/ssh.md

Options (for every command, before or after it):
  --tcti TCTI      the TPM to use, as a tpm2-tss TCTI string, for example
                   "device:/dev/tpmrm0" or "swtpm:host=127.0.0.1,port=2321"
                   (default: $TPMKEY_TCTI, else the tpm2-tss default)
  --keystore DIR   the keystore directory (default: $TPMKEY_KEYSTORE, else
                   $XDG_DATA_HOME/tpmkey or ~/.local/share/tpmkey)
  -h, --help       show help; "tpmkey COMMAND --help" (or "tpmkey help COMMAND")
                   shows a command's help
  --version        show the version

Each command takes only the options and arguments its help lists; anything else
(an unknown option, a missing value, an argument too many or too few) is a usage
error. "--" ends the options. Exit status: 0 done, 1 failed, 2 usage error.

Keys are used through the OpenSSL provider as tpm2:NAME, for example:
  openssl pkeyutl -provider tpmkey -provider default -sign -inkey tpm2:NAME ...
See docs/uri.md and docs/configuration.md.
)";

const char* kCreateHelp = R"(Usage: tpmkey create NAME [--algorithm ALG] [--usage USAGE]
                    [--password | --password-file FILE | --no-password]
                    [--description TEXT] [--persistent HANDLE]

Generates a key inside the TPM and stores its TPM-wrapped blob in the keystore as
NAME.pem (a standard TSS2 PRIVATE KEY file, mode 0600). The private key never
leaves the TPM: it is created with fixedTPM and fixedParent (non-migratable) under
the owner storage primary key (parent 0x40000001). An existing key is never
overwritten.

  NAME                letters, digits, "-", "_" and "." (not first); at most 128
  --algorithm ALG     ec-p256 (default), ec-p384, ec-p521, rsa2048, rsa3072, rsa4096;
                      rsa-pss2048 (or rsa-pss), rsa-pss3072, rsa-pss4096: RSA keys
                      that sign only with RSASSA-PSS and SHA-256 (bound to it in the
                      TPM; usage sign only);
                      rsa1024 and rsa-pss1024 only by name, with a warning that they
                      are weak (for peers that accept nothing else)
  --usage USAGE       what the key may do, fixed in the TPM when it is created:
                        sign           signatures only (default)
                        decrypt        RSA decryption (openssl pkeyutl -decrypt, cms
                                       -decrypt) or, for an EC key, ECDH key agreement;
                                       no signatures
                        sign,decrypt   both (what tpm2-openssl makes)
                      The TPM enforces it: a key refuses what its usage lacks, and
                      tpmkey says so before sending the TPM anything. One key for
                      both signing and decryption is discouraged (a signing request
                      is then also a decryption request); it is needed for a
                      self-signed certificate of a decryption key.
  --password          protect the key with a password, asked for on the terminal
  --password-file F   protect the key with the password in the first line of F
  --no-password       no password, without asking
                      With none of these, the password is asked for on a terminal
                      (twice; empty for none), and without a terminal the key has
                      none. A password is at most 32 bytes. A key made without one
                      is not subject to the TPM's dictionary-attack lockout.
  --description TEXT  a note stored in the key file
  --persistent HANDLE also make the key persistent in the TPM at HANDLE
                      (0x81000000-0x81ffffff; needs the owner hierarchy, with an empty
                      owner password). tpm2:NAME then uses it in place, without a
                      TPM2_Load; the key file is kept too, and "tpmkey delete" evicts it.
                      The same key is also usable as tpm2:handle=HANDLE.

Examples:
  tpmkey create ssh --algorithm ec-p256
  tpmkey create mail --algorithm rsa2048 --usage sign,decrypt
  tpmkey create signer --algorithm rsa-pss
)";

const char* kInitHelp = R"(Usage: tpmkey init [--repin] [--transient]

Prepares the keystore for this TPM. Every TPM command tpmkey sends runs in an HMAC
session salted to the TPM's storage root key (SRK: the ECC P-256 owner primary of
the TCG provisioning guidance), with the secret parameters encrypted. init:

  1. makes the SRK persistent at 0x81000001 when that handle is free (this needs
     the owner hierarchy, with an empty owner password), or adopts the key already
     there when it is the same standard SRK. Processes then skip creating a
     primary key (4-9 ms each, and one TPM object slot);
  2. records the SRK's name in KEYSTORE/srk.pin. From then on, sessions are salted
     only to a key with this name: a TPM that presents another SRK (cleared,
     replaced, or an impostor on the bus) is refused with an error, and nothing
     secret is sent to it.

Without init, the name is recorded the first time tpmkey uses the TPM (trust on
first use) and each process creates the SRK as a transient object.

  --repin       replace a pin that names another SRK. Only after the TPM was
                cleared on purpose: keys made under the old SRK no longer load.
  --transient   record the pin, but do not make the SRK persistent

Running init again is harmless: it reports the SRK and the pin it finds.
Undo the persistent SRK with: tpm2_evictcontrol -C o -c 0x81000001
)";

const char* kListHelp = R"(Usage: tpmkey list

Lists the keys in the keystore: name, algorithm, size in bits, whether a password is
needed, and the parent the key was created under, followed by ", persistent HANDLE"
for keys made persistent, ", imported" for keys that were made outside the TPM
and brought in ("tpmkey import"; sensitiveDataOrigin clear), and ", usage decrypt"
or ", usage sign,decrypt" for keys that may decrypt (keys that only sign show no
usage). Does not use the TPM.
)";

const char* kPubkeyHelp = R"(Usage: tpmkey pubkey NAME [--format pem|openssh] [--comment TEXT]

Prints the public key of NAME. "pem" (default) is a SubjectPublicKeyInfo PEM block;
"openssh" is one line for ~/.ssh/authorized_keys (comment: NAME unless --comment).
Does not use the TPM.
)";

const char* kDeleteHelp = R"(Usage: tpmkey delete NAME [--yes | -y]

Deletes NAME from the keystore, and evicts it from the TPM if it was created with
--persistent (only if the handle still holds this very key). The key cannot be
recovered: anything signed with it stays valid, but no new signature can be made. Asks for confirmation on
the terminal; --yes (or -y) skips the question (needed when there is no terminal).
)";

const char* kAlgorithmsHelp = R"(Usage: tpmkey algorithms

Asks the TPM (TPM2_TestParms) which of tpmkey's key algorithms it supports.
)";

const char* kImportFileHelp = R"(Usage: tpmkey import-file NAME PATH [--password-file FILE] [--description TEXT]

Adds an existing TPM key file to the keystore as NAME.pem (mode 0600, written
atomically; an existing key is never overwritten). PATH is a TSS2 PRIVATE KEY
file, PEM or DER, as made by tpm2-openssl ("openssl genpkey -provider tpm2"),
openssl_tpm2_engine, "tpm2_encodeobject" (tpm2-tools) or tpmkey itself. The key
never leaves the TPM: the file holds only its TPM-wrapped blob, and PATH is left
as it is.

Before anything is written, import-file checks that the key works on this TPM:
the TPM loads it under the parent the file names (TPM2_Load under 0x40000001, the
standard owner storage key, or under a persistent parent 0x81xxxxxx), signs a
fixed self-test digest with it (TPM2_Sign), and the signature is verified in
software with the public key from the file. Refused, with the reason:

  - a file that is not a usable TSS2 key file (damaged, sealed data, importable or
    policy keys, an RSA parent, a key that cannot sign, an unsupported algorithm);
  - a NAME that is already in the keystore;
  - a key that this TPM cannot load: made on another TPM, under another parent,
    or a persistent parent that is not there (the file is probably from another
    machine, or the TPM was cleared since).

When the file says the key has a password, the check needs it: it is read from
--password-file, else asked for on the terminal. It is used for the self-test
only and is not stored. A key without a password is imported without asking.

  NAME                letters, digits, "-", "_" and "." (not first); at most 128
  PATH                the key file to import
  --password-file F   the key's password is the first line of F
  --description TEXT  a note stored in the imported copy (default: the file's own)

Examples:
  openssl genpkey -provider tpm2 -algorithm EC -pkeyopt group:P-256 -out k.pem
  tpmkey import-file web k.pem --description "from tpm2-openssl"
  tpmkey import-file tools-key key.pem      # made by tpm2_create + tpm2_encodeobject
)";

const char* kImportHelp = R"(Usage: tpmkey import NAME FILE [--passphrase-file F]
                    [--password | --password-file F | --no-password]
                    [--description TEXT]

Moves an existing RSA, RSA-PSS or EC private key into this TPM and stores it in the keystore
as NAME.pem (a standard TSS2 PRIVATE KEY file, mode 0600, written atomically; an
existing key is never overwritten). From then on the key signs in the TPM, as
tpm2:NAME, like a key made with "tpmkey create".

FILE is read with OpenSSL's decoders, PEM or DER:
  PKCS#1          -----BEGIN RSA PRIVATE KEY-----
  SEC1            -----BEGIN EC PRIVATE KEY-----
  PKCS#8          -----BEGIN PRIVATE KEY-----
  encrypted       -----BEGIN ENCRYPTED PRIVATE KEY----- (PKCS#8), or PKCS#1 and
                  SEC1 with "Proc-Type: 4,ENCRYPTED" (legacy PEM encryption)
  OpenSSH         -----BEGIN OPENSSH PRIVATE KEY----- (what ssh-keygen writes),
                  unencrypted: read by tpmkey itself. With a passphrase (kdf
                  bcrypt): decrypted by ssh-keygen (package openssh-client),
                  which rewrites a copy in a private 0700 directory under
                  $TMPDIR (or /tmp) as PKCS#8 encrypted under a random
                  passphrase (the passphrases go to its standard input, never
                  to argv or the environment); tpmkey decrypts that in memory
                  and removes the copy and the directory. The key is never on
                  disk in clear
and holds an RSA key of 2048, 3072 or 4096 bits or an EC key on P-256, P-384 or
P-521, as far as the TPM supports it ("tpmkey algorithms").

How: the key is wrapped in software for this TPM's storage root key (a duplication
blob, which only this TPM can open) and sent with TPM2_Import in tpmkey's salted
session. The TPM then loads it (TPM2_Load) and signs a fixed self-test digest
(TPM2_Sign), and the signature is verified in software with the ORIGINAL key.
Only then is NAME.pem written.

The imported key
  - cannot leave this TPM from now on: TPM2_Import needs keys whose fixedTPM and
    fixedParent are clear, but the key has no authorization policy, and without
    one TPM2_Duplicate can never be authorized;
  - is marked as imported (sensitiveDataOrigin clear in its public area): "tpmkey
    list" and "openssl pkey -text" show that it was outside the TPM once.

FILE is left as it was: it still holds the private key in software, and whoever
has a copy of it (or of a backup of it) can use the key. Once you have checked
your backups, remove it, for example with "shred -u FILE" (on journaling, copy-on-
write and flash file systems, shred cannot promise that no copy remains).

A TPM key file (TSS2 PRIVATE KEY, PEM or DER) given as FILE is added as "tpmkey
import-file" does; --password-file is then the key's existing password. An
importable key file made by "tpmkey wrap" for this TPM is brought in with
TPM2_Import under the storage root key, loaded (TPM2_Load) and checked with a
self-test signature verified with the file's public key; a file wrapped for
another TPM is refused, naming both storage root keys. --password-file is then
the password the key was wrapped with.

  NAME                 letters, digits, "-", "_" and "." (not first); at most 128
  FILE                 the private key file; it is only read
  --passphrase-file F  FILE's passphrase is the first line of F. Without it, an
                       encrypted FILE's passphrase (PKCS#8, PEM or OpenSSH) is
                       asked for on the terminal
  --password           give the new key a password, asked twice on the terminal
  --password-file F    give the new key the password in the first line of F
  --no-password        no password, without asking. With none of these three,
                       the password is asked for on a terminal (twice; empty
                       for none); without a terminal the key has no password
                       (and, like keys "tpmkey create" makes without one, is
                       not subject to the TPM's dictionary-attack lockout). A
                       password is at most 32 bytes: a TPM key's authValue is
                       at most the size of its name algorithm's digest (SHA-256)
  --description TEXT   a note stored in the key file

Refused with the reason, before anything is written or sent to the TPM: a public
key or certificate instead of a private key, a damaged file, a wrong passphrase,
Ed25519, X25519 and other key types, curves and RSA sizes tpmkey does not import,
a NAME that is taken, a password longer than 32 bytes; an encrypted OpenSSH key
when ssh-keygen is not installed (with how to convert a copy by hand).
An algorithm the TPM lacks is refused after TPM2_TestParms alone.

Examples:
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out web.key
  tpmkey import web web.key --description "web server"
  tpmkey import signer signer-enc.pem --passphrase-file pass.txt --password
  tpmkey import ssh ~/.ssh/id_ecdsa         # ssh-keygen's format, passphrase or not
  shred -u web.key
)";

const char* kPasswdHelp = R"(Usage: tpmkey passwd NAME [--old-password-file F]
                    [--password-file F | --no-password]

Changes, sets or removes the password of the keystore key NAME. The TPM makes a
new key blob with the new password (TPM2_ObjectChangeAuth, authorized with the
current password; the new one is sent encrypted in tpmkey's salted session), and
NAME.pem is replaced with it atomically.

  --old-password-file F  the current password is the first line of F (asked for
                         on the terminal otherwise; not needed for a key without one)
  --password-file F      the new password is the first line of F
  --no-password          remove the password
Without --password-file or --no-password, the new password is asked for on the
terminal, twice; an empty one removes the password (after a confirmation). A
password is at most 32 bytes (checked before the TPM is asked anything).

A wrong current password costs one dictionary-attack failure in the TPM, and
nothing is written. Too many of them put the TPM into lockout: then wait for it
to recover, or clear it with "tpm2_dictionarylockout --clear-lockout".

The TPM still accepts the OLD key file with the OLD password: it is a different
blob of the same key. Delete backups and copies of NAME.pem made before the
change, or the old password keeps working with them.

A key made without a password was made with noDA: the TPM does not count wrong
guesses of a password set later. For a password the lockout protects, create a
new key with one. A key made with a password stays subject to the lockout after
its password is removed.

Persistent keys (made with --persistent, or tpm2:handle=) are refused: the
persistent object in the TPM would keep the old password. Create a new key.
)";

const char* kSrkHelp = R"(Usage: tpmkey srk [--out FILE]

Exports the public key of this TPM's storage root key (SRK), so that keys can be
wrapped for this TPM on another machine ("tpmkey wrap"), without that machine
having any access to this TPM. The SRK is the one tpmkey uses: the owner primary
of the standard ECC P-256 storage template (the persistent one at 0x81000001 if
"tpmkey init" made it so), and it must be the SRK the keystore's pin names (a TPM
that presents another SRK is refused, as for every other command; without a pin,
this one is pinned now).

The file has a few lines of explanation, the SRK's TPM name on a line
"SRK-Name: HEX" (its name algorithm, SHA-256, then the digest of its public
area), and the public key as a SubjectPublicKeyInfo PEM block, which
"openssl pkey -pubin -in FILE -text" shows. The name is printed too: compare it
over another channel with what the wrapping side prints, to be sure the file was
not swapped on the way.

  --out FILE  write the file (mode 0600, atomically; an existing file is never
              overwritten). Without it, the file is printed on standard output

Examples:
  tpmkey srk --out srk.pem
  ssh build-host tpmkey srk > build-host-srk.pem
)";

const char* kWrapHelp = R"(Usage: tpmkey wrap --parent SRK-FILE --from KEY --out FILE
                   [--passphrase-file F] [--password-file F] [--description TEXT]

Wraps an existing RSA or EC private key for one other TPM: the one whose storage
root key is in SRK-FILE (written there by "tpmkey srk"). FILE is an importable
TSS2 PRIVATE KEY file (type importableKey, draft-bottomley-tpm2-keys): the key's
public area, its private part as a duplication blob that only that TPM can open
(encrypted with a seed shared with its SRK by ECDH, and integrity-protected), and
the encrypted seed. On that machine, "tpmkey import NAME FILE" brings the key in
(TPM2_Import, TPM2_Load and a self-test signature), after which it signs as
tpm2:NAME there, like any key made with "tpmkey import".

wrap uses no TPM at all (--tcti is not used): it works where no TPM is
reachable, for example on an offline machine that holds the private keys.

SRK-FILE is checked first: its public key with the standard ECC P-256 storage
template must have the TPM name its SRK-Name line gives, or it is refused. KEY is
read as "tpmkey import" reads it (PEM or DER: PKCS#1, SEC1, PKCS#8, encrypted or
not; OpenSSH's format, a passphrase-protected one with ssh-keygen's help; RSA
2048, 3072 or 4096 bits, EC P-256, P-384 or P-521). FILE names the SRK
it was made for (an SRK-Name line before the PEM block), so that another TPM
refuses it before anything is sent to import it.

  --parent SRK-FILE    the target TPM's SRK file ("tpmkey srk --out")
  --from KEY           the private key to wrap; it is only read
  --out FILE           the wrapped key file, written with mode 0600 and
                       atomically; an existing file is never overwritten
  --passphrase-file F  KEY's passphrase is the first line of F. Without it, an
                       encrypted KEY's passphrase is asked for on the terminal
  --password-file F    give the wrapped key the password in the first line of F
                       (at most 32 bytes); the key then needs it for every
                       signature on the target TPM. Without it, the key has no
                       password (and is not subject to the dictionary-attack
                       lockout)
  --description TEXT   a note stored in the key file

FILE is protected by the target TPM alone: nobody without that TPM can use it,
so it can travel over untrusted channels. KEY is left as it was and still holds
the private key in software: remove it once the import is done and your backups
are checked (for example "shred -u KEY").

Examples:
  target$ tpmkey srk --out srk.pem
  offline$ tpmkey wrap --parent srk.pem --from web.key --out web.wrapped.pem
  target$ tpmkey import web web.wrapped.pem
)";

// ---- options ----

// An option in a command's table. Value options take "--name VALUE" or "--name=VALUE".
struct Option {
  const char* name;             // "--algorithm"
  bool value = false;           // takes a value
  const char* alias = nullptr;  // "-y"
};

// Allowed before and after every command.
const Option kGlobalOptions[] = {
    {"--tcti", true}, {"--keystore", true}, {"--help", false, "-h"}, {"--version", false}};

struct Args {
  std::string command;
  std::vector<std::string> positional;
  std::map<std::string, std::string> options;  // --name value (the last one given counts)
  std::vector<std::string> flags;              // --name (aliases as their option's name)
  bool has_flag(const std::string& f) const { return std::find(flags.begin(), flags.end(), f) != flags.end(); }
  std::optional<std::string> option(const std::string& o) const {
    auto it = options.find(o);
    if (it == options.end()) return std::nullopt;
    return it->second;
  }
};

struct Command {
  const char* name;
  int (*run)(const Args&);
  const char* help;
  std::vector<Option> options;        // besides kGlobalOptions
  std::vector<const char*> operands;  // the positional arguments, all required: {"NAME", "PATH"}
};

const Command* find_command(const std::string& name);
// Whether `name` is a value option of kGlobalOptions or of any command.
bool takes_value_anywhere(const std::string& name);

// "tpmkey: MSG" and where to look, on stderr; exit code 2.
int usage_error(const std::string& command, const std::string& msg) {
  std::fprintf(stderr, "tpmkey: %s\nTry \"tpmkey %s%s--help\".\n", msg.c_str(), command.c_str(),
               command.empty() ? "" : " ");
  return kExitUsage;
}

int fail(const Error& e) {
  std::fprintf(stderr, "tpmkey: %s\n", e.text().c_str());
  return kExitError;
}

const Option* find_option(const std::vector<Option>& table, const std::string& name) {
  for (const auto& o : table)
    if (name == o.name || (o.alias && name == o.alias)) return &o;
  return nullptr;
}

const Option* find_global(const std::string& name) {
  for (const auto& o : kGlobalOptions)
    if (name == o.name || (o.alias && name == o.alias)) return &o;
  return nullptr;
}

std::string quoted_command(const std::string& command) { return "\"tpmkey " + command + "\""; }

// What a command's operands are, for messages: "no arguments", "NAME", "NAME and PATH".
std::string operands_text(const Command& c) {
  if (c.operands.empty()) return "no arguments";
  std::string s;
  for (size_t i = 0; i < c.operands.size(); ++i) {
    if (i) s += i + 1 == c.operands.size() ? " and " : ", ";
    s += c.operands[i];
  }
  return s;
}

// Splits "--name=value" (long options only).
void split_option(const std::string& s, std::string* name, std::string* value, bool* has_value) {
  *name = s;
  *has_value = false;
  if (size_t eq = s.find('='); eq != std::string::npos && s.rfind("--", 0) == 0) {
    *name = s.substr(0, eq);
    *value = s.substr(eq + 1);
    *has_value = true;
  }
}

bool is_option(const std::string& s) { return s.size() > 1 && s[0] == '-'; }

// The command word: the first argument that is neither an option nor an option's value (an
// option that takes a value in any table consumes the next argument). Empty if there is none.
std::string find_command_word(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    if (s == "--") return i + 1 < argc ? argv[i + 1] : "";
    if (!is_option(s)) return s;
    std::string name, value;
    bool has_value = false;
    split_option(s, &name, &value, &has_value);
    if (!has_value && takes_value_anywhere(name)) ++i;
  }
  return "";
}

// Parses argv against the global options and the command's own table ("help" and no command:
// the global ones only). Options may come before or after the command; "--" ends them. Every
// mistake is a usage error (exit 2) that says what is wrong.
std::optional<Args> parse_args(int argc, char** argv, int* exit_code) {
  Args a;
  const std::string word = find_command_word(argc, argv);
  const Command* cmd = word.empty() || word == "help" ? nullptr : find_command(word);
  if (!word.empty() && word != "help" && !cmd) {
    *exit_code = usage_error("", "unknown command \"" + word + "\"");
    return std::nullopt;
  }
  auto error = [&](const std::string& msg) {
    *exit_code = usage_error(cmd ? word : "", msg);
    return std::nullopt;
  };
  bool options_done = false;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    if (!options_done && s == "--") {
      options_done = true;
      continue;
    }
    if (!options_done && is_option(s)) {
      std::string name, value;
      bool has_value = false;
      split_option(s, &name, &value, &has_value);
      const Option* o = find_global(name);
      if (!o && cmd) o = find_option(cmd->options, name);
      if (!o) {
        if (!word.empty()) return error("unknown option " + name + " for " + quoted_command(word));
        return error("unknown option " + name);
      }
      if (o->value) {
        if (!has_value) {
          if (i + 1 >= argc) return error(std::string(o->name) + " needs a value");
          value = argv[++i];
        }
        a.options[o->name] = value;
      } else {
        if (has_value) return error(std::string(o->name) + " takes no value");
        a.flags.push_back(o->name);
      }
    } else if (a.command.empty()) {
      a.command = s;  // == word
    } else {
      a.positional.push_back(s);
    }
  }
  return a;
}

Context make_context(const Args& a) {
  auto tcti = a.option("--tcti"), ks = a.option("--keystore");
  SettingsInput in;
  in.tcti = tcti ? tcti->c_str() : nullptr;
  in.keystore = ks ? ks->c_str() : nullptr;
  return Context(resolve_settings(in));
}

// ---- commands ----

// "--password and --password-file exclude each other" when more than one way to give a new key's
// password is given; empty otherwise.
std::string password_option_conflict(const Args& a) {
  std::vector<std::string> given;
  if (a.has_flag("--password")) given.push_back("--password");
  if (a.option("--password-file")) given.push_back("--password-file");
  if (a.has_flag("--no-password")) given.push_back("--no-password");
  if (given.size() < 2) return "";
  std::string s = given[0];
  for (size_t i = 1; i < given.size(); ++i) s += (i + 1 == given.size() ? " and " : ", ") + given[i];
  return s + " exclude each other";
}

// A new key's password (create, import): --password-file F (its first line; an empty one is
// refused), --no-password, --password (asked on the terminal, twice), or, with none of them, asked
// on a terminal as ssh-keygen does, empty for none. Without a terminal and without an option,
// scripts get no prompt and a key without a password. nullopt: no password.
Result<std::optional<SecretBytes>> new_key_password(const Args& a, const std::string& name) {
  if (auto file = a.option("--password-file")) {
    auto pw = read_secret_file(*file);
    if (!pw) return pw.take_error();
    if (pw->empty()) return make_error(Reason::kInvalidArgument, "the password file is empty");
    return std::optional<SecretBytes>(std::move(*pw));
  }
  if (a.has_flag("--no-password")) return std::optional<SecretBytes>();
  if (a.has_flag("--password")) {
    auto pw = prompt_password("Password for the new key " + name + ": ", true);
    if (!pw) return pw.take_error();
    return std::optional<SecretBytes>(std::move(*pw));  // an empty one is refused by the core
  }
  if (!have_tty()) return std::optional<SecretBytes>();
  auto pw = prompt_password("Enter a password for the new key (empty for none): ", true);
  if (!pw) return pw.take_error();
  if (pw->empty()) return std::optional<SecretBytes>();
  return std::optional<SecretBytes>(std::move(*pw));
}

int cmd_create(const Args& a) {
  const std::string& name = a.positional[0];
  std::string alg = a.option("--algorithm").value_or("ec-p256");
  const AlgorithmSpec* spec = find_algorithm(alg);
  if (!spec)
    return fail(make_error(Reason::kUnsupported, "unknown algorithm \"" + alg +
                                                     "\" (ec-p256, ec-p384, ec-p521, rsa2048, rsa3072, rsa4096, "
                                                     "rsa-pss2048, rsa-pss3072, rsa-pss4096, rsa1024, rsa-pss1024)"));
  if (std::string conflict = password_option_conflict(a); !conflict.empty()) return usage_error("create", conflict);
  if (spec->weak) std::fprintf(stderr, "tpmkey: warning: %s\n", kWeakWarning);
  const std::string usage = a.option("--usage").value_or("sign");
  const unsigned usage_bits = parse_usage(usage);
  if (!usage_bits)
    return usage_error("create", "--usage must be sign, decrypt or sign,decrypt, not \"" + usage + "\"");
  CreateRequest req;
  req.name = name;
  req.spec = spec;
  req.usage = usage_bits;
  req.description = a.option("--description").value_or("");
  if (auto h = a.option("--persistent")) {
    auto uri = parse_uri("tpm2:handle=" + *h);
    if (!uri || !uri->handle)
      return usage_error("create", "--persistent needs a handle 0x81000000-0x81ffffff, not \"" + *h + "\"");
    req.persistent = *uri->handle;
  }
  Context ctx = make_context(a);
  // Before asking for a password: the name must be free.
  if (Status st = check_create(ctx, name); !st) return fail(st.error());
  auto pw = new_key_password(a, name);
  if (!pw) return fail(pw.take_error().context("create(tpm2:" + name + ")"));
  req.password = std::move(*pw);
  auto made = create_key(ctx, req);
  if (!made) return fail(made.error());
  const std::string usage_note = made->usage == kUsageSign ? "" : ", usage " + usage_text(made->usage);
  std::printf("created tpm2:%s (%s%s%s) in %s\n", name.c_str(), made->spec->name, usage_note.c_str(),
              made->password ? ", password" : "", made->path.c_str());
  if (made->persistent)
    std::printf("persistent at 0x%08x (also tpm2:handle=0x%08x)\n", made->persistent, made->persistent);
  return kExitOk;
}

int cmd_init(const Args& a) {
  Context ctx = make_context(a);
  InitOptions opts;
  opts.persistent = !a.has_flag("--transient");
  opts.repin = a.has_flag("--repin");
  auto done = init_keystore(ctx, opts);
  if (!done) return fail(done.error());
  switch (done->srk) {
    case Tpm::Provisioned::kCreated: std::printf("made the storage root key persistent at 0x%08x\n", kSrkHandle); break;
    case Tpm::Provisioned::kAdopted: std::printf("using the storage root key already persistent at 0x%08x\n", kSrkHandle); break;
    case Tpm::Provisioned::kHandleTaken:
      std::printf("0x%08x holds another key (not the standard ECC P-256 SRK), left alone:\n"
                  "the SRK will be created as a transient object in each process\n", kSrkHandle);
      break;
    case Tpm::Provisioned::kTransient: std::printf("the SRK stays transient (created in each process)\n"); break;
  }
  const char* pinned = "pinned in";
  if (done->pin_outcome == PinOutcome::kAlreadyPinned) pinned = "already pinned in";
  if (done->pin_outcome == PinOutcome::kReplaced) pinned = "pinned (replacing the previous pin) in";
  std::printf("SRK name %s\n%s %s\n", to_hex(done->pin.name).c_str(), pinned, done->pin_path.c_str());
  return kExitOk;
}

int cmd_list(const Args& a) {
  Context ctx = make_context(a);
  auto names = ctx.keystore().list();
  if (!names) return fail(names.error());
  if (names->empty()) {
    std::printf("no keys in %s (create one with: tpmkey create NAME)\n", ctx.keystore().dir().c_str());
    return kExitOk;
  }
  // One row per key; a column is as wide as its widest entry, or as wide as usual if that is more.
  struct Row {
    std::string name, alg, bits, password, parent, error;  // error: why the key file cannot be read
  };
  std::vector<Row> rows;
  int rc = kExitOk;
  for (const auto& n : *names) {
    auto kf = ctx.keystore().read(n);
    if (!kf) {
      rows.push_back({n, "", "", "", "", kf.error().text()});
      rc = kExitError;
      continue;
    }
    const TPMT_PUBLIC& pub = kf->pub.publicArea;
    auto spec = spec_of(pub);
    Row r{n, spec ? (*spec)->name : "unknown", spec ? std::to_string((*spec)->bits) : "?", kf->empty_auth ? "no" : "yes",
          ""};
    // An RSA-PSS key signs with one hash only, the one its public area names.
    if (spec && (*spec)->kind == KeyKind::kRsaPss) {
      std::string hash = hash_name(pub.parameters.rsaDetail.scheme.details.rsapss.hashAlg);
      for (char& c : hash) c = char(std::tolower(static_cast<unsigned char>(c)));
      r.alg += " (" + hash + ")";
    }
    char parent[16];
    std::snprintf(parent, sizeof parent, "0x%08x", kf->parent);
    r.parent = parent;
    if (kf->parent == kOwnerParent) r.parent += " (owner SRK)";
    if (kf->persistent) {
      char where[32];
      std::snprintf(where, sizeof where, ", persistent 0x%08x", kf->persistent);
      r.parent += where;
    }
    if (is_imported(pub)) r.parent += ", imported";
    if (unsigned u = usage_of(pub); u != kUsageSign) r.parent += ", usage " + usage_text(u);
    rows.push_back(std::move(r));
  }
  size_t w_name = 24, w_alg = 10, w_bits = 6;
  for (const Row& r : rows) {
    w_name = std::max(w_name, r.name.size());
    if (!r.error.empty()) continue;
    w_alg = std::max(w_alg, r.alg.size());
    w_bits = std::max(w_bits, r.bits.size());
  }
  auto line = [&](const Row& r) {
    if (!r.error.empty()) {
      std::printf("%-*s %s\n", int(w_name), r.name.c_str(), r.error.c_str());
      return;
    }
    std::printf("%-*s %-*s %-*s %-9s %s\n", int(w_name), r.name.c_str(), int(w_alg), r.alg.c_str(), int(w_bits),
                r.bits.c_str(), r.password.c_str(), r.parent.c_str());
  };
  line({"NAME", "ALGORITHM", "BITS", "PASSWORD", "PARENT", ""});
  for (const Row& r : rows) line(r);
  return rc;
}

int cmd_pubkey(const Args& a) {
  const std::string& name = a.positional[0];
  if (Status st = validate_name(name); !st) return fail(st.error());
  std::string format = a.option("--format").value_or("pem");
  if (format != "pem" && format != "openssh") return usage_error("pubkey", "--format must be pem or openssh");
  Context ctx = make_context(a);
  const std::string what = "pubkey(tpm2:" + name + ")";
  auto kf = ctx.keystore().read(name);
  if (!kf) return fail(kf.take_error().context(what));
  if (format == "openssh") {
    auto line = openssh_public(kf->pub.publicArea, a.option("--comment").value_or(name));
    if (!line) return fail(line.take_error().context(what));
    std::printf("%s\n", line->c_str());
    return kExitOk;
  }
  auto crypto = ctx.crypto();
  if (!crypto) return fail(crypto.error());
  auto pkey = public_pkey(kf->pub.publicArea, (*crypto)->libctx());
  if (!pkey) return fail(pkey.take_error().context(what));
  auto pem = spki_pem(pkey->get());
  if (!pem) return fail(pem.take_error().context(what));
  std::fputs(pem->c_str(), stdout);
  return kExitOk;
}

int cmd_delete(const Args& a) {
  const std::string& name = a.positional[0];
  Context ctx = make_context(a);
  if (Status st = check_delete(ctx, name); !st) return fail(st.error());
  if (!a.has_flag("--yes")) {
    const std::string what = "delete(tpm2:" + name + ")";
    if (!have_tty())
      return fail(make_error(Reason::kInvalidArgument, "refusing to delete without confirmation: add --yes").context(what));
    if (!confirm_on_tty("Delete tpm2:" + name + "? The key cannot be recovered."))
      return fail(make_error(Reason::kInvalidArgument, "not confirmed; nothing deleted").context(what));
  }
  auto done = delete_key(ctx, name);
  if (!done) return fail(done.error());
  switch (done->eviction) {
    case Eviction::kNotPersistent: break;
    case Eviction::kEvicted: std::printf("evicted 0x%08x from the TPM\n", done->persistent); break;
    case Eviction::kAlreadyGone: std::printf("0x%08x was no longer in the TPM\n", done->persistent); break;
  }
  std::printf("deleted tpm2:%s\n", name.c_str());
  return kExitOk;
}

int cmd_algorithms(const Args& a) {
  Context ctx = make_context(a);
  auto tpm = ctx.tpm();
  if (!tpm) return fail(tpm.error());
  for (const auto& spec : all_algorithms()) {
    Status st = (*tpm)->supports(spec);
    if (!st && st.error().reason != Reason::kUnsupported) return fail(st.error());
    std::printf("%-9s %s\n", spec.name, st ? "supported" : "not supported by this TPM");
  }
  return kExitOk;
}

int cmd_passwd(const Args& a) {
  if (a.option("--password-file") && a.has_flag("--no-password"))
    return usage_error("passwd", "--password-file and --no-password exclude each other");
  Context ctx = make_context(a);
  auto target = open_passwd(ctx, a.positional[0]);
  if (!target) return fail(target.error());
  const std::string label = "tpm2:" + target->name, what = "passwd(" + label + ")";
  PasswordChange change;
  if (target->has_password()) {
    Result<SecretBytes> old = SecretBytes();
    if (auto file = a.option("--old-password-file")) old = read_secret_file(*file);
    else if (have_tty()) old = prompt_password("Current password of " + label + ": ", false);
    else
      old = make_error(Reason::kAuthFailed,
                       "the key has a password: give it with --old-password-file (there is no terminal to ask on)");
    if (!old) return fail(old.take_error().context(what));
    change.old_password = std::move(*old);
  } else if (a.option("--old-password-file")) {
    std::fprintf(stderr, "tpmkey: %s has no password; --old-password-file is not used\n", label.c_str());
  }
  if (auto file = a.option("--password-file")) {
    auto pw = read_secret_file(*file);
    if (!pw) return fail(pw.take_error().context(what));
    if (pw->empty())
      return fail(make_error(Reason::kInvalidArgument,
                             "the password file is empty (to remove the password, use --no-password)")
                      .context(what));
    change.new_password = std::move(*pw);
  } else if (!a.has_flag("--no-password")) {
    if (!have_tty())
      return fail(make_error(Reason::kInvalidArgument,
                             "give the new password with --password-file, or --no-password to remove it (there is no "
                             "terminal to ask on)")
                      .context(what));
    auto pw = prompt_password("New password for " + label + " (empty for none): ", true);
    if (!pw) return fail(pw.take_error().context(what));
    if (!pw->empty()) {
      change.new_password = std::move(*pw);
    } else if (target->has_password() &&
               !confirm_on_tty("Remove the password of " + label + "? Whoever can read its key file can then use it.")) {
      return fail(make_error(Reason::kInvalidArgument, "not confirmed; nothing changed").context(what));
    }
  }
  if (!target->has_password() && !change.new_password) {
    std::printf("%s has no password; nothing changed\n", label.c_str());
    return kExitOk;
  }
  auto done = change_password(ctx, *target, change);
  if (!done) return fail(done.error());
  if (!done->password)
    std::printf("removed the password of %s in %s\n", label.c_str(), done->path.c_str());
  else if (done->had_password)
    std::printf("changed the password of %s in %s\n", label.c_str(), done->path.c_str());
  else
    std::printf("set a password for %s in %s\n", label.c_str(), done->path.c_str());
  std::printf("The TPM still accepts copies of the old key file with the old password: delete backups and copies of "
              "%s made before this change.\n",
              done->path.c_str());
  if (done->password && done->no_da)
    std::fprintf(stderr,
                 "tpmkey: %s was made without a password (noDA): the TPM does not limit guesses of its password. For "
                 "a password the dictionary-attack lockout protects, create a new key with one.\n",
                 label.c_str());
  return kExitOk;
}

// The password of a key file being imported, which its self-test needs: from --password-file,
// else asked on the terminal; without one, an error that starts with `says_so`.
Result<SecretBytes> existing_password(const Args& a, const std::string& prompt, const std::string& says_so) {
  if (auto file = a.option("--password-file")) return read_secret_file(*file);
  if (have_tty()) return prompt_password(prompt, false);
  return make_error(Reason::kAuthFailed, says_so + ", which the check needs: give it with --password-file (there "
                                                   "is no terminal to ask on)");
}

// import-file, and import of a TPM key file.
int import_tss2_file(const Args& a, Context& ctx, const std::string& name, const std::string& path) {
  auto import = open_import(ctx, name, path);
  if (!import) return fail(import.error());
  ImportOptions opts;
  opts.description = a.option("--description");
  if (import->needs_password()) {
    Result<SecretBytes> pw = existing_password(a, "Password of the key in " + path + ": ",
                                               "the key file " + path + " says the key has a password");
    if (!pw) return fail(pw.take_error().context("import-file(tpm2:" + name + ")"));
    opts.password = std::move(*pw);
  } else if (a.option("--password-file")) {
    std::fprintf(stderr, "tpmkey: %s: the key needs no password; --password-file is not used\n", path.c_str());
  }
  auto done = import_key_file(ctx, std::move(*import), std::move(opts));
  if (!done) return fail(done.error());
  if (done->empty_auth_corrected)
    std::fprintf(stderr,
                 "tpmkey: %s: the file says the key has a password, but the TPM accepted an empty one: "
                 "stored as a key without a password\n",
                 path.c_str());
  char parent[64];
  if (done->parent == kOwnerParent)
    std::snprintf(parent, sizeof parent, "0x%08x (owner SRK)", done->parent);
  else
    std::snprintf(parent, sizeof parent, "persistent parent 0x%08x", done->parent);
  std::printf("imported tpm2:%s (%s%s) from %s into %s\n", name.c_str(), done->spec->name,
              done->password ? ", password" : "", path.c_str(), done->path.c_str());
  std::printf("checked: this TPM loaded it under %s, and its self-test signature verified\n", parent);
  return kExitOk;
}

// import of an importable key file (tpmkey wrap): its --password-file is the wrapped key's password.
int import_wrapped_file(const Args& a, Context& ctx, const std::string& name, const std::string& path) {
  const std::string what = "import(tpm2:" + name + ")";
  auto import = open_wrapped(ctx, name, path);
  if (!import) return fail(import.error());
  ImportOptions opts;
  opts.description = a.option("--description");
  if (import->needs_password()) {
    Result<SecretBytes> pw = existing_password(a, "Password of the wrapped key in " + path + ": ",
                                               path + " was wrapped with a password");
    if (!pw) return fail(pw.take_error().context(what));
    opts.password = std::move(*pw);
  } else if (a.option("--password-file")) {
    std::fprintf(stderr, "tpmkey: %s: the key needs no password; --password-file is not used\n", path.c_str());
  }
  auto done = import_wrapped_key(ctx, std::move(*import), std::move(opts));
  if (!done) return fail(done.error());
  std::printf("imported tpm2:%s (%s%s, imported) from %s (wrapped for this TPM) into %s\n", name.c_str(),
              done->spec->name, done->password ? ", password" : "", path.c_str(), done->path.c_str());
  std::printf("checked: this TPM took it in under 0x%08x (owner SRK) with TPM2_Import, loaded it, and its self-test "
              "signature verified with the file's public key\n",
              kOwnerParent);
  return kExitOk;
}

int cmd_srk(const Args& a) {
  Context ctx = make_context(a);
  auto srk = read_tpm_srk(ctx);
  if (!srk) return fail(srk.error());
  auto crypto = ctx.crypto();
  if (!crypto) return fail(crypto.error());
  auto text = srk_file_text(**crypto, *srk);
  if (!text) return fail(text.error());
  auto out = a.option("--out");
  if (!out) {
    std::fputs(text->c_str(), stdout);
    return kExitOk;
  }
  if (Status st = write_file_exclusive(*out, *text); !st) return fail(st.take_error().context("srk"));
  std::printf("wrote the storage root key of this TPM to %s\nSRK name: %s\n", out->c_str(), to_hex(srk->name).c_str());
  return kExitOk;
}

int cmd_wrap(const Args& a) {
  for (const char* required : {"--parent", "--from", "--out"})
    if (!a.option(required)) return usage_error("wrap", std::string("missing ") + required);
  WrapRequest req;
  req.parent_path = *a.option("--parent");
  req.key_path = *a.option("--from");
  req.out_path = *a.option("--out");
  req.description = a.option("--description").value_or("");
  const std::string what = "wrap(" + req.out_path + ")";
  const auto passphrase_file = a.option("--passphrase-file");
  bool asked = false;
  req.passphrase = [&]() -> Result<SecretBytes> {
    asked = true;
    if (passphrase_file) return read_secret_file(*passphrase_file);
    if (have_tty()) return prompt_password("Passphrase of " + req.key_path + ": ", false);
    return make_error(Reason::kAuthFailed, req.key_path + " is encrypted: give its passphrase with --passphrase-file "
                                                          "(there is no terminal to ask on)");
  };
  if (auto file = a.option("--password-file")) {
    auto pw = read_secret_file(*file);
    if (!pw) return fail(pw.take_error().context(what));
    if (pw->empty()) return fail(make_error(Reason::kInvalidArgument, "the password file is empty").context(what));
    req.password = std::move(*pw);
  }
  // No TPM: only the software side of the context is used.
  Context ctx = make_context(a);
  auto crypto = ctx.crypto();
  if (!crypto) return fail(crypto.error());
  auto done = wrap_key(**crypto, req);
  if (!done) return fail(done.error());
  if (passphrase_file && !asked)
    std::fprintf(stderr, "tpmkey: %s is not encrypted; --passphrase-file is not used\n", req.key_path.c_str());
  std::printf("wrapped %s (%s, %s%s) for the TPM whose SRK name is %s into %s\n", req.key_path.c_str(),
              done->spec->name, done->format.c_str(), done->password ? ", password" : "",
              to_hex(done->srk_name).c_str(), req.out_path.c_str());
  std::printf("on that machine: tpmkey import NAME %s\n", req.out_path.c_str());
  std::printf("%s is unchanged and still holds the private key in software\n", req.key_path.c_str());
  return kExitOk;
}

int cmd_import_file(const Args& a) {
  Context ctx = make_context(a);
  return import_tss2_file(a, ctx, a.positional[0], a.positional[1]);
}

int cmd_import(const Args& a) {
  const std::string& name = a.positional[0];
  const std::string& path = a.positional[1];
  const std::string what = "import(tpm2:" + name + ")";
  if (std::string conflict = password_option_conflict(a); !conflict.empty()) return usage_error("import", conflict);
  Context ctx = make_context(a);
  // Before any question: the name must be free.
  if (Status st = check_import(ctx, name); !st) return fail(st.error());
  auto kind = identify_key_file(path);
  if (!kind) return fail(kind.take_error().context(what));
  if (*kind == KeyFileKind::kTss2 && is_wrapped_key_file(path)) {
    // Wrapped for this TPM by `tpmkey wrap`: TPM2_Import of the blob as it is.
    if (a.option("--passphrase-file"))
      std::fprintf(stderr, "tpmkey: %s is a wrapped key file; --passphrase-file is not used\n", path.c_str());
    if (a.has_flag("--password"))
      std::fprintf(stderr, "tpmkey: %s is a wrapped key file, which keeps its own password; --password is not used\n",
                   path.c_str());
    return import_wrapped_file(a, ctx, name, path);
  }
  if (*kind == KeyFileKind::kTss2) {
    // The key is in a TPM already: what import-file does (its --password-file is the key's own).
    if (a.option("--passphrase-file"))
      std::fprintf(stderr, "tpmkey: %s is a TPM key file; --passphrase-file is not used\n", path.c_str());
    if (a.has_flag("--password") || a.has_flag("--no-password"))
      std::fprintf(stderr, "tpmkey: %s is a TPM key file, which keeps its own password; %s is not used\n", path.c_str(),
                   a.has_flag("--password") ? "--password" : "--no-password");
    return import_tss2_file(a, ctx, name, path);
  }
  const auto passphrase_file = a.option("--passphrase-file");
  PassphraseSource passphrase = [&]() -> Result<SecretBytes> {
    if (passphrase_file) return read_secret_file(*passphrase_file);
    if (have_tty()) return prompt_password("Passphrase of " + path + ": ", false);
    return make_error(Reason::kAuthFailed, path + " is encrypted: give its passphrase with --passphrase-file (there "
                                                  "is no terminal to ask on)");
  };
  auto import = open_private_key(ctx, name, path, passphrase);
  if (!import) return fail(import.error());
  if (passphrase_file && !import->key.encrypted)
    std::fprintf(stderr, "tpmkey: %s is not encrypted; --passphrase-file is not used\n", path.c_str());
  PrivateKeyOptions opts;
  opts.description = a.option("--description").value_or("");
  auto pw = new_key_password(a, name);  // import_private_key refuses an empty or too long one
  if (!pw) return fail(pw.take_error().context(what));
  opts.password = std::move(*pw);
  auto done = import_private_key(ctx, std::move(*import), std::move(opts));
  if (!done) return fail(done.error());
  std::printf("imported tpm2:%s (%s%s, imported) from %s (%s) into %s\n", name.c_str(), done->spec->name,
              done->password ? ", password" : "", path.c_str(), done->format.c_str(), done->path.c_str());
  std::printf("checked: this TPM took it in under 0x%08x (owner SRK) with TPM2_Import, loaded it, and its self-test "
              "signature verified with the original key\n",
              kOwnerParent);
  std::printf("tpm2:%s cannot leave this TPM. %s is unchanged and still holds the private key in software:\n"
              "once you have checked your backups, remove it, for example with: shred -u %s\n"
              "(shred cannot reach copies in backups or snapshots, nor always on journaling, copy-on-write or flash "
              "file systems)\n",
              name.c_str(), path.c_str(), path.c_str());
  return kExitOk;
}

// Each command's own options (kGlobalOptions are allowed everywhere) and operands. The help texts
// above document the same.
const Command kCommands[] = {
    {"init", cmd_init, kInitHelp, {{"--repin"}, {"--transient"}}, {}},
    {"create",
     cmd_create,
     kCreateHelp,
     {{"--algorithm", true},
      {"--usage", true},
      {"--password"},
      {"--password-file", true},
      {"--no-password"},
      {"--description", true},
      {"--persistent", true}},
     {"NAME"}},
    {"list", cmd_list, kListHelp, {}, {}},
    {"pubkey", cmd_pubkey, kPubkeyHelp, {{"--format", true}, {"--comment", true}}, {"NAME"}},
    {"delete", cmd_delete, kDeleteHelp, {{"--yes", false, "-y"}}, {"NAME"}},
    {"passwd",
     cmd_passwd,
     kPasswdHelp,
     {{"--old-password-file", true}, {"--password-file", true}, {"--no-password"}},
     {"NAME"}},
    {"import",
     cmd_import,
     kImportHelp,
     {{"--passphrase-file", true}, {"--password"}, {"--password-file", true}, {"--no-password"}, {"--description", true}},
     {"NAME", "FILE"}},
    {"import-file", cmd_import_file, kImportFileHelp, {{"--password-file", true}, {"--description", true}},
     {"NAME", "PATH"}},
    {"algorithms", cmd_algorithms, kAlgorithmsHelp, {}, {}},
    {"srk", cmd_srk, kSrkHelp, {{"--out", true}}, {}},
    {"wrap",
     cmd_wrap,
     kWrapHelp,
     {{"--parent", true},
      {"--from", true},
      {"--out", true},
      {"--passphrase-file", true},
      {"--password-file", true},
      {"--description", true}},
     {}},
};

const Command* find_command(const std::string& name) {
  for (const auto& c : kCommands)
    if (name == c.name) return &c;
  return nullptr;
}

bool takes_value_anywhere(const std::string& name) {
  if (const Option* o = find_global(name)) return o->value;
  for (const auto& c : kCommands)
    if (const Option* o = find_option(c.options, name)) return o->value;
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  // The agent parses its own, ssh-agent-like options (the global ones included, wherever they are).
  if (find_command_word(argc, argv) == "agent") {
    std::vector<char*> args{const_cast<char*>("agent")};
    bool skipped = false;
    for (int i = 1; i < argc; ++i) {
      if (!skipped && std::string(argv[i]) == "agent") {
        skipped = true;
        continue;
      }
      args.push_back(argv[i]);
    }
    args.push_back(nullptr);
    return agent::agent_main(int(args.size() - 1), args.data());
  }
  int exit_code = kExitOk;
  auto args = parse_args(argc, argv, &exit_code);
  if (!args) return exit_code;
  if (args->has_flag("--version")) {
    std::printf("tpmkey %s\n", TPMKEY_VERSION);
    return kExitOk;
  }
  const bool help = args->has_flag("--help");
  if (args->command == "help") {
    // "tpmkey help" and "tpmkey help COMMAND".
    if (args->positional.empty()) {
      std::fputs(kMainHelp, stdout);
      return kExitOk;
    }
    if (args->positional.size() > 1)
      return usage_error("", "unexpected argument \"" + args->positional[1] + "\" for \"tpmkey help\"");
    if (args->positional[0] == "agent") {
      std::fputs(agent::kAgentHelp, stdout);
      return kExitOk;
    }
    const Command* c = find_command(args->positional[0]);
    if (!c) return usage_error("", "unknown command \"" + args->positional[0] + "\"");
    std::fputs(c->help, stdout);
    return kExitOk;
  }
  if (args->command.empty()) {
    std::fputs(kMainHelp, help ? stdout : stderr);
    return help ? kExitOk : kExitUsage;
  }
  const Command* c = find_command(args->command);
  if (!c) return usage_error("", "unknown command \"" + args->command + "\"");  // parse_args refused it already
  if (help) {
    std::fputs(c->help, stdout);
    return kExitOk;
  }
  const size_t want = c->operands.size(), got = args->positional.size();
  if (got < want)
    return usage_error(c->name, "missing " + std::string(c->operands[got]) + " for " + quoted_command(c->name) +
                                    " (it takes " + operands_text(*c) + ")");
  if (got > want)
    return usage_error(c->name, "unexpected argument \"" + args->positional[want] + "\" for " +
                                    quoted_command(c->name) + " (it takes " + operands_text(*c) + ")");
  return c->run(*args);
}

}  // namespace tpmkey::cli

int main(int argc, char** argv) { return tpmkey::cli::main(argc, argv); }
