// Parameter tables: one per parameter set. Each entry is a parameter's definition as OpenSSL sees
// it in the settable or gettable list (key, data type, size) and the function that handles it.
// The list is derived from the table at compile time, and the same table drives parsing, so what
// a context advertises and what it handles cannot drift apart.
//
//   Status set_group(GenCtx& g, const OSSL_PARAM& p);
//   constexpr auto kEcGenParams = settable<GenCtx>({
//       {OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, nullptr, 0), set_group},
//   });
//   ... settable_params: return kEcGenParams.list();   set_params: apply_params(kEcGenParams, g, params)
#pragma once

#include <array>
#include <cstddef>
#include <cstring>

#include <openssl/core.h>
#include <openssl/params.h>

#include "keystore/error.h"

namespace tpmkey::provider {

// A parameter a context takes. `set` reads the value and checks its type itself, so that each
// parameter's message says what it wants ("bits must be a number").
template <typename Ctx>
struct SetParam {
  OSSL_PARAM def;
  Status (*set)(Ctx& ctx, const OSSL_PARAM& p);
};

// A parameter a context answers. `get` writes the value; false when `p` cannot hold it.
template <typename Ctx>
struct GetParam {
  OSSL_PARAM def;
  bool (*get)(const Ctx& ctx, OSSL_PARAM& p);
};

template <typename Entry, size_t N>
class ParamTable {
 public:
  constexpr explicit ParamTable(const Entry (&entries)[N]) {
    for (size_t i = 0; i < N; ++i) {
      entries_[i] = entries[i];
      list_[i] = entries[i].def;
    }
    list_[N] = OSSL_PARAM{};  // OSSL_PARAM_END
  }

  // The settable or gettable list: the definitions in table order, then OSSL_PARAM_END.
  const OSSL_PARAM* list() const noexcept { return list_.data(); }
  const std::array<Entry, N>& entries() const noexcept { return entries_; }
  // The entry for `key`, or nullptr.
  const Entry* find(const char* key) const noexcept {
    for (const Entry& e : entries_)
      if (std::strcmp(e.def.key, key) == 0) return &e;
    return nullptr;
  }

 private:
  std::array<Entry, N> entries_{};
  std::array<OSSL_PARAM, N + 1> list_{};
};

// settable<Ctx>({...}) and gettable<Ctx>({...}) make a table; N is counted from the entries.
template <typename Ctx, size_t N>
constexpr ParamTable<SetParam<Ctx>, N> settable(const SetParam<Ctx> (&entries)[N]) {
  return ParamTable<SetParam<Ctx>, N>(entries);
}
template <typename Ctx, size_t N>
constexpr ParamTable<GetParam<Ctx>, N> gettable(const GetParam<Ctx> (&entries)[N]) {
  return ParamTable<GetParam<Ctx>, N>(entries);
}

// set_params: applies `params` in their order. A key of the table goes to its handler, and the
// first failure stops; a key the table does not know is ignored, as OpenSSL's own providers do.
template <typename Ctx, size_t N>
Status apply_params(const ParamTable<SetParam<Ctx>, N>& table, Ctx& ctx, const OSSL_PARAM params[]) {
  for (const OSSL_PARAM* p = params; p && p->key; ++p)
    if (const SetParam<Ctx>* e = table.find(p->key)) TPMKEY_TRY(e->set(ctx, *p));
  return Status::Ok();
}

// get_params: fills each parameter of the table that `params` asks for, in table order; false
// when one cannot take its value. Keys the table does not know are left alone.
template <typename Ctx, size_t N>
bool answer_params(const ParamTable<GetParam<Ctx>, N>& table, const Ctx& ctx, OSSL_PARAM params[]) {
  for (const GetParam<Ctx>& e : table.entries()) {
    OSSL_PARAM* p = OSSL_PARAM_locate(params, e.def.key);
    if (p && !e.get(ctx, *p)) return false;
  }
  return true;
}

}  // namespace tpmkey::provider
