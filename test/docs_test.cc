// docs/architecture.md's "Files" tables against the source tree (no TPM): every file a table
// names exists, and every source file is named in some table.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace tpmkey::test {
namespace {

namespace fs = std::filesystem;

const fs::path kSourceDir = TPMKEY_SOURCE_DIR;

// The directories whose source files the tables must name, and what counts as a source file.
const char* const kSourceDirs[] = {"provider", "keystore", "tools", "test", "bench"};

bool is_source_file(const fs::path& p) {
  const std::string ext = p.extension().string();
  return ext == ".cc" || ext == ".h" || ext == ".sh" || ext == ".map" || p.filename() == "CMakeLists.txt";
}

// `common.{h,cc}` is common.h and common.cc.
std::vector<std::string> expand_braces(const std::string& name) {
  const size_t open = name.find('{'), close = name.find('}', open);
  if (open == std::string::npos || close == std::string::npos) return {name};
  std::vector<std::string> out;
  std::istringstream alternatives(name.substr(open + 1, close - open - 1));
  for (std::string alt; std::getline(alternatives, alt, ',');)
    for (std::string& rest : expand_braces(name.substr(close + 1))) out.push_back(name.substr(0, open) + alt + rest);
  return out;
}

// The cells of a table row: split at the '|' that are not inside a code span.
std::vector<std::string> cells(const std::string& row) {
  std::vector<std::string> out;
  std::string cell;
  bool code = false;
  for (size_t i = 1; i < row.size(); ++i) {  // row[0] is the leading '|'
    const char c = row[i];
    if (c == '`') code = !code;
    if (c == '|' && !code && row[i - 1] != '\\') {
      out.push_back(cell);
      cell.clear();
    } else {
      cell += c;
    }
  }
  return out;
}

// The backticked names in a cell: `a.h` / `a.cc`, `main.cc`, `x.h`, `common.{h,cc}`.
std::vector<std::string> backticked(const std::string& cell) {
  std::vector<std::string> out;
  for (size_t open = cell.find('`'); open != std::string::npos; open = cell.find('`', open)) {
    const size_t close = cell.find('`', open + 1);
    if (close == std::string::npos) break;
    for (std::string& n : expand_braces(cell.substr(open + 1, close - open - 1))) out.push_back(n);
    open = close + 1;
  }
  return out;
}

bool is_separator_row(const std::vector<std::string>& row) {
  return std::all_of(row.begin(), row.end(), [](const std::string& c) {
    return c.find_first_not_of(" :-") == std::string::npos && c.find('-') != std::string::npos;
  });
}

struct FilesTables {
  std::set<std::string> named;     // repository-relative paths, as the tables name them
  std::set<std::string> sections;  // the directories of the "###" headings, "provider/", ...
  std::vector<std::string> problems;
};

// Reads the tables under "## Files": each "### DIR/" heading gives the directory the first column
// of its table is relative to.
FilesTables read_files_tables(const fs::path& doc) {
  FilesTables t;
  std::ifstream in(doc);
  if (!in) {
    t.problems.push_back("cannot read " + doc.string());
    return t;
  }
  bool in_files = false, table_has_header = false;
  std::string dir, line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.rfind("## ", 0) == 0) {
      in_files = line == "## Files";
      dir.clear();
      continue;
    }
    if (!in_files) continue;
    if (line.rfind("### ", 0) == 0) {
      std::string heading = line.substr(4);
      std::erase(heading, '`');
      heading = heading.substr(0, heading.find(' '));
      if (heading.empty() || heading.back() != '/') {
        t.problems.push_back("line " + std::to_string(number) + ": heading \"" + line + "\" names no directory");
        dir.clear();
      } else {
        dir = heading;
        t.sections.insert(dir);
      }
      table_has_header = false;
      continue;
    }
    if (line.rfind("|", 0) != 0) {
      table_has_header = false;  // the next table starts with its header again
      continue;
    }
    const std::vector<std::string> row = cells(line);
    if (!table_has_header) {  // the header row ("| File | Owns |")
      table_has_header = true;
      continue;
    }
    if (row.empty() || is_separator_row(row)) continue;
    if (dir.empty()) {
      t.problems.push_back("line " + std::to_string(number) + ": a table row outside a \"### DIR/\" section");
      continue;
    }
    const std::vector<std::string> names = backticked(row[0]);
    if (names.empty()) t.problems.push_back("line " + std::to_string(number) + ": no `file` in the first column");
    for (const std::string& n : names) t.named.insert((fs::path(dir) / n).lexically_normal().string());
  }
  return t;
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += "\n  " + s;
  return out;
}

class ArchitectureFiles : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { tables_ = new FilesTables(read_files_tables(kSourceDir / "docs/architecture.md")); }
  static void TearDownTestSuite() {
    delete tables_;
    tables_ = nullptr;
  }
  static FilesTables* tables_;
};
FilesTables* ArchitectureFiles::tables_ = nullptr;

TEST_F(ArchitectureFiles, TablesAreReadable) {
  EXPECT_TRUE(tables_->problems.empty()) << "docs/architecture.md:" << join(tables_->problems);
  for (const char* d : kSourceDirs) EXPECT_TRUE(tables_->sections.count(std::string(d) + "/")) << "no ### " << d << "/ table";
  EXPECT_GT(tables_->named.size(), 50u) << "the tables were not found or not parsed";
}

TEST_F(ArchitectureFiles, EveryNamedFileExists) {
  std::vector<std::string> missing;
  for (const std::string& p : tables_->named)
    if (!fs::is_regular_file(kSourceDir / p)) missing.push_back(p);
  EXPECT_TRUE(missing.empty()) << "docs/architecture.md names files that do not exist:" << join(missing);
}

TEST_F(ArchitectureFiles, EverySourceFileIsNamed) {
  std::vector<std::string> unnamed;
  for (const char* d : kSourceDirs) {
    ASSERT_TRUE(fs::is_directory(kSourceDir / d)) << d;
    for (const auto& e : fs::recursive_directory_iterator(kSourceDir / d)) {
      if (!e.is_regular_file() || !is_source_file(e.path())) continue;
      const std::string rel = e.path().lexically_relative(kSourceDir).lexically_normal().string();
      if (!tables_->named.count(rel)) unnamed.push_back(rel);
    }
  }
  std::sort(unnamed.begin(), unnamed.end());
  EXPECT_TRUE(unnamed.empty()) << "source files that no table in docs/architecture.md \"## Files\" names:"
                               << join(unnamed);
}

// The parser's own cases: the ways a first column names files.
TEST(ArchitectureFilesParser, NamesInACell) {
  EXPECT_EQ(backticked(" `support.h` / `support.cc` "), (std::vector<std::string>{"support.h", "support.cc"}));
  EXPECT_EQ(backticked(" `main.cc`, `benchmarks.h` "), (std::vector<std::string>{"main.cc", "benchmarks.h"}));
  EXPECT_EQ(backticked(" `common.{h,cc}`, `summary.{h,cc}` "),
            (std::vector<std::string>{"common.h", "common.cc", "summary.h", "summary.cc"}));
  EXPECT_EQ(backticked(" `data/x.pem` "), (std::vector<std::string>{"data/x.pem"}));
  EXPECT_EQ(cells("| `a.h` | owns `x | y` and z |"), (std::vector<std::string>{" `a.h` ", " owns `x | y` and z "}));
  EXPECT_TRUE(is_separator_row(cells("| --- | :---: |")));
  EXPECT_FALSE(is_separator_row(cells("| `a.h` | b |")));
}

}  // namespace
}  // namespace tpmkey::test
