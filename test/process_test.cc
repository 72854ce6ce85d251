// The test support's command runner (test/process.h), which every test that runs a program uses:
// children of a process whose other threads are busy start every time, and what starts them
// reaches them (environment, PATH, standard descriptors, a new session), no TPM.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "test/process.h"

namespace tpmkey::test {
namespace {

// Threads that allocate and free without a pause, as a test's client and proxy threads do: a
// child forked while one of them holds an allocator lock, and that allocates before it execs,
// waits forever (the sanitizer runtimes do not reset their allocator locks in a forked child;
// BrokerTest.SixteenConcurrentOneShotClients lost one client in ten that way under ASan).
class BusyThreads {
 public:
  explicit BusyThreads(int n) {
    for (int i = 0; i < n; ++i)
      threads_.emplace_back([this, i] {
        // Thousands of blocks at a time, then all of them freed: the thread's own cache of free
        // blocks runs out and overflows, so it takes the allocator's shared locks again and again.
        std::vector<std::string> kept;
        for (unsigned round = 0; !stop_.load(std::memory_order_relaxed); ++round) {
          kept.emplace_back(16 + (round * 37 + unsigned(i)) % 1000, 'x');
          if (kept.size() == 4000) kept.clear();
        }
      });
  }
  ~BusyThreads() {
    stop_ = true;
    for (auto& t : threads_) t.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

// Eight threads start programs at once while two more allocate: every program starts.
TEST(Process, ChildrenOfABusyProcessStart) {
  BusyThreads busy(2);
  std::atomic<int> hung{0}, wrong{0};
  std::vector<std::thread> launchers;
  for (int t = 0; t < 8; ++t)
    launchers.emplace_back([&, t] {
      for (int i = 0; i < 40; ++i) {
        const std::string value = std::to_string(t) + "." + std::to_string(i);
        auto r = run({"sh", "-c", "echo \"$TPMKEY_TEST_VALUE\""}, {"TPMKEY_TEST_VALUE=" + value}, "", 20);
        if (r.timed_out) ++hung;
        else if (r.exit_code != 0 || r.out != value + "\n") ++wrong;
      }
    });
  for (auto& t : launchers) t.join();
  EXPECT_EQ(hung.load(), 0) << "programs that did not start within 20 s";
  EXPECT_EQ(wrong.load(), 0);
}

TEST(Process, WhatTheChildSees) {
  // Its environment: this process's, with the entries given added or replacing.
  setenv("TPMKEY_TEST_INHERITED", "inherited", 1);
  setenv("TPMKEY_TEST_REPLACED", "old", 1);
  auto r = run({"sh", "-c", "echo $TPMKEY_TEST_INHERITED $TPMKEY_TEST_REPLACED $TPMKEY_TEST_ADDED"},
               {"TPMKEY_TEST_REPLACED=new", "TPMKEY_TEST_ADDED=added"});
  unsetenv("TPMKEY_TEST_INHERITED");
  unsetenv("TPMKEY_TEST_REPLACED");
  EXPECT_OK(r);
  EXPECT_EQ(r.out, "inherited new added\n");

  // stdin, stdout and stderr apart; no controlling terminal (a new session of its own).
  r = run({"sh", "-c", "cat; echo to-stderr >&2; [ \"$(ps -o sid= -p $$ | tr -d ' ')\" = $$ ] && echo leader; "
                       "if (: </dev/tty) 2>/dev/null; then echo has-a-terminal; fi"},
          {}, "from-stdin\n");
  EXPECT_OK(r);
  EXPECT_EQ(r.out, "from-stdin\nleader\n");
  EXPECT_NE(r.err.find("to-stderr\n"), std::string::npos) << r.err;

  // The program is looked up on the PATH the child is given; none there: exit code 127.
  const std::string dir = make_temp_dir("tpmkey-process-test");
  write_file(dir + "/tpmkey-test-program", "#!/bin/sh\necho found\n");
  ASSERT_EQ(chmod((dir + "/tpmkey-test-program").c_str(), 0700), 0);
  r = run({"tpmkey-test-program"}, {"PATH=" + dir + ":/usr/bin:/bin"});
  EXPECT_OK(r);
  EXPECT_EQ(r.out, "found\n");
  r = run({"tpmkey-test-program"}, {"PATH=/usr/bin:/bin"});
  EXPECT_EQ(r.exit_code, 127);
  remove_tree(dir);

  // A command that does not end in time is killed, and the message says what it waited in.
  r = run({"sleep", "30"}, {}, "", 1);
  EXPECT_TRUE(r.timed_out);
  EXPECT_EQ(r.exit_code, 128 + 9);
  EXPECT_NE(r.hung_in.find("sleep; thread "), std::string::npos) << r.hung_in;
#if defined(__x86_64__)
  EXPECT_NE(r.hung_in.find("nanosleep"), std::string::npos) << r.hung_in;
#endif
}

}  // namespace
}  // namespace tpmkey::test
