// Restricted unpickler: a pickle virtual machine over an arena of inert values.
// Opcode semantics follow CPython's Lib/pickletools.py documentation. Values live in an arena
// and refer to each other by index, so self-referencing pickles (legal through the memo)
// cannot create ownership cycles or deep recursive destructors.
#include "io/pickle.h"

#include <array>
#include <cstring>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

#include "io/error.h"

// Values are built with designated initializers naming only the fields their kind uses.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace iadgpt::io {

namespace {

enum class Kind : uint8_t { None, Bool, Int, Float, Str, Bytes, Tuple, List, Dict, Global, Object, Tensor, Storage };

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::None: return "None";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::Str: return "str";
    case Kind::Bytes: return "bytes";
    case Kind::Tuple: return "tuple";
    case Kind::List: return "list";
    case Kind::Dict: return "dict";
    case Kind::Global: return "global";
    case Kind::Object: return "object";
    case Kind::Tensor: return "tensor";
    case Kind::Storage: return "storage";
  }
  return "?";
}

// The callables we recognise; everything else is refused at the GLOBAL opcode.
enum class Callable : uint8_t { None, OrderedDict, RebuildTensorV2, RebuildParameter, RebuildParameterWithState, StorageType, TorchClass };

using Ref = uint32_t;

struct Value {
  Kind kind = Kind::None;
  Callable callable = Callable::None;  // Global
  at::ScalarType dtype = at::kFloat;  // Global of a storage type; Storage
  int64_t i = 0;       // Int, Bool
  double f = 0;        // Float
  std::string s;       // Str, Bytes, Global (qualified name), Object (class name), Storage (key)
  std::vector<Ref> items;  // Tuple, List; Dict as key,value,key,value...; Object: [state]
  at::Tensor tensor;    // Tensor, Storage
};

struct StorageName {
  std::string_view name;
  at::ScalarType dtype;
};
constexpr std::array<StorageName, 10> kStorages{{
    {"FloatStorage", at::kFloat},
    {"HalfStorage", at::kHalf},
    {"BFloat16Storage", at::kBFloat16},
    {"DoubleStorage", at::kDouble},
    {"LongStorage", at::kLong},
    {"IntStorage", at::kInt},
    {"ShortStorage", at::kShort},
    {"CharStorage", at::kChar},
    {"ByteStorage", at::kByte},
    {"BoolStorage", at::kBool},
}};

// Limits that keep hostile input from exhausting memory or the stack.
constexpr size_t kMaxNesting = 256;            // dict/object depth when flattening
constexpr int64_t kMaxDims = 64;               // tensor rank

class Unpickler {
 public:
  Unpickler(std::span<const uint8_t> in, const StorageLoader& loader, std::string_view what)
      : in_(in), load_(loader), what_(what) {}

  Ref run();
  const Value& at(Ref r) const { return arena_[r]; }
  InputError error(std::string_view msg) const {
    return InputError(fmt::format("{}: pickle: {} (opcode {} at byte {})", what_, msg, op_name_, op_pos_));
  }
  InputError plain_error(std::string_view msg) const { return InputError(fmt::format("{}: {}", what_, msg)); }

 private:
  // --- input ---
  const uint8_t* take(uint64_t n) {
    if (n > in_.size() - pos_) throw error(fmt::format("truncated: needs {} more bytes, {} left", n, in_.size() - pos_));
    const uint8_t* p = in_.data() + pos_;
    pos_ += n;
    return p;
  }
  uint8_t u8() { return *take(1); }
  template <class T>
  T le() {  // little-endian fixed-width integer
    T v;
    std::memcpy(&v, take(sizeof(T)), sizeof(T));
    return v;
  }
  std::string line() {  // text-protocol argument up to '\n'
    size_t start = pos_;
    while (pos_ < in_.size() && in_[pos_] != '\n') ++pos_;
    if (pos_ >= in_.size()) throw error("truncated: missing newline");
    std::string s(reinterpret_cast<const char*>(in_.data() + start), pos_ - start);
    ++pos_;
    return s;
  }
  std::string bytes(uint64_t n) {
    auto p = take(n);
    return std::string(reinterpret_cast<const char*>(p), n);
  }

  // --- values ---
  Ref make(Value v) {
    arena_.push_back(std::move(v));
    return static_cast<Ref>(arena_.size() - 1);
  }
  Ref make_int(int64_t i) { return make(Value{.kind = Kind::Int, .i = i}); }
  Ref make_seq(Kind k, std::vector<Ref> items) { return make(Value{.kind = k, .items = std::move(items)}); }

  // --- stack ---
  void push(Ref r) { stack_.push_back(r); }
  Ref pop() {
    if (stack_.size() <= floor()) throw error("stack underflow");
    Ref r = stack_.back();
    stack_.pop_back();
    return r;
  }
  Ref& top() {
    if (stack_.size() <= floor()) throw error("stack underflow");
    return stack_.back();
  }
  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  std::vector<Ref> pop_mark() {  // items since the last MARK, and the mark removed
    if (marks_.empty()) throw error("no MARK on the stack");
    size_t m = marks_.back();
    marks_.pop_back();
    std::vector<Ref> items(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  const Value& expect(Ref r, Kind k, std::string_view role) const {
    if (arena_[r].kind != k) throw error(fmt::format("{} must be a {}, found {}", role, kind_name(k), kind_name(arena_[r].kind)));
    return arena_[r];
  }

  // --- semantics ---
  void memo_put(uint64_t idx) { memo_[idx] = top(); }
  Ref memo_get(uint64_t idx) const {
    auto it = memo_.find(idx);
    if (it == memo_.end()) throw error(fmt::format("memo key {} not defined", idx));
    return it->second;
  }
  Ref global(const std::string& module, const std::string& name);
  Ref call(Ref callable, Ref args, std::string_view how);
  Ref rebuild_tensor(const std::vector<Ref>& args);
  Ref persistent_load(Ref pid);
  void set_items(Ref dict, const std::vector<Ref>& kv);
  void append(Ref list, const std::vector<Ref>& items);
  void build(Ref obj, Ref state);
  std::vector<int64_t> int_tuple(Ref r, std::string_view role) const;

  std::span<const uint8_t> in_;
  size_t pos_ = 0;
  const StorageLoader& load_;
  std::string_view what_;
  std::string op_name_ = "?";
  size_t op_pos_ = 0;
  std::vector<Value> arena_;
  std::vector<Ref> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Ref> memo_;
  std::unordered_map<std::string, Ref> storages_;  // persistent key -> Storage (shared tensors)
};

Ref Unpickler::global(const std::string& module, const std::string& name) {
  Value g{.kind = Kind::Global, .s = module + "." + name};
  if (module == "collections" && name == "OrderedDict") {
    g.callable = Callable::OrderedDict;
  } else if (module == "torch._utils" && name == "_rebuild_tensor_v2") {
    g.callable = Callable::RebuildTensorV2;
  } else if (module == "torch._utils" && name == "_rebuild_parameter") {
    g.callable = Callable::RebuildParameter;
  } else if (module == "torch._utils" && name == "_rebuild_parameter_with_state") {
    g.callable = Callable::RebuildParameterWithState;
  } else if (module == "torch" && name.ends_with("Storage")) {
    for (const auto& st : kStorages)
      if (st.name == name) {
        g.callable = Callable::StorageType;
        g.dtype = st.dtype;
      }
  } else if (module == "__torch__" || module.starts_with("__torch__.")) {
    // TorchScript module classes: inert attribute containers, whatever their name.
    g.callable = Callable::TorchClass;
  }
  if (g.callable == Callable::None)
    throw error(fmt::format("forbidden global '{}' (only state-dict types are accepted; nothing is executed)", g.s));
  return make(std::move(g));
}

std::vector<int64_t> Unpickler::int_tuple(Ref r, std::string_view role) const {
  const auto& t = arena_[r];
  if (t.kind != Kind::Tuple && t.kind != Kind::List) throw error(fmt::format("{} must be a tuple of ints", role));
  if (static_cast<int64_t>(t.items.size()) > kMaxDims) throw error(fmt::format("{} has more than {} dims", role, kMaxDims));
  std::vector<int64_t> out;
  for (Ref x : t.items) {
    const auto& v = expect(x, Kind::Int, role);
    if (v.i < 0) throw error(fmt::format("{} has a negative entry {}", role, v.i));
    out.push_back(v.i);
  }
  return out;
}

// _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
Ref Unpickler::rebuild_tensor(const std::vector<Ref>& args) {
  if (args.size() < 4) throw error("_rebuild_tensor_v2 needs (storage, offset, size, stride, ...)");
  const auto& storage = expect(args[0], Kind::Storage, "_rebuild_tensor_v2 storage");
  const int64_t offset = expect(args[1], Kind::Int, "_rebuild_tensor_v2 storage_offset").i;
  const auto size = int_tuple(args[2], "_rebuild_tensor_v2 size");
  const auto stride = int_tuple(args[3], "_rebuild_tensor_v2 stride");
  if (size.size() != stride.size()) throw error(fmt::format("size has {} dims but stride has {}", size.size(), stride.size()));
  if (offset < 0) throw error(fmt::format("negative storage offset {}", offset));
  // The last element addressed must lie inside the storage (checked without overflow).
  const int64_t numel = storage.tensor.numel();
  bool empty = false;
  int64_t last = offset;
  for (size_t d = 0; d < size.size(); ++d) {
    if (size[d] == 0) empty = true;
    int64_t span = 0;
    if (size[d] > 0 && (__builtin_mul_overflow(size[d] - 1, stride[d], &span) || __builtin_add_overflow(last, span, &last)))
      throw error("tensor extent overflows");
  }
  if (!empty && last >= numel)
    throw error(fmt::format("tensor of size {} stride {} offset {} reads element {} of a storage of {} elements",
                            fmt::join(size, "x"), fmt::join(stride, ","), offset, last, numel));
  if (empty && offset > numel) throw error(fmt::format("storage offset {} past storage of {} elements", offset, numel));
  // A view with more elements than its storage repeats elements (stride 0 or overlapping
  // strides). State dicts never hold such tensors, and a hostile one could make a 1-element
  // storage look like a 2^40-element tensor that the first .to() or .contiguous() allocates.
  int64_t view_numel = 1;
  for (int64_t s : size)
    if (__builtin_mul_overflow(view_numel, s, &view_numel)) throw error("tensor numel overflows");
  if (view_numel > numel)
    throw error(fmt::format("tensor of size {} has more elements than its storage ({}); overlapping views are not supported",
                            fmt::join(size, "x"), numel));
  return make(Value{.kind = Kind::Tensor, .tensor = storage.tensor.as_strided(size, stride, offset)});
}

// Persistent id ('storage', storage_type, key, location, numel): a storage record data/<key>.
Ref Unpickler::persistent_load(Ref pid) {
  const auto& t = arena_[pid];
  if (t.kind != Kind::Tuple || t.items.size() != 5 || arena_[t.items[0]].kind != Kind::Str || arena_[t.items[0]].s != "storage")
    throw error("persistent id is not ('storage', type, key, location, numel)");
  const Value& type = arena_[t.items[1]];
  if (type.kind != Kind::Global || type.callable != Callable::StorageType)
    throw error("persistent id storage type is not a torch.*Storage");
  const std::string key = expect(t.items[2], Kind::Str, "storage key").s;
  expect(t.items[3], Kind::Str, "storage location");
  const int64_t numel = expect(t.items[4], Kind::Int, "storage numel").i;
  if (numel < 0) throw error(fmt::format("storage '{}' has negative size {}", key, numel));
  const at::ScalarType dtype = type.dtype;
  if (auto it = storages_.find(key); it != storages_.end()) {
    const auto& s = arena_[it->second];
    if (s.dtype != dtype || s.tensor.numel() < numel)
      throw error(fmt::format("storage '{}' is referenced with two different types or sizes", key));
    return it->second;
  }
  auto tensor = load_(key, dtype, numel);
  if (tensor.scalar_type() != dtype || tensor.dim() != 1 || tensor.numel() < numel)
    throw error(fmt::format("storage '{}' could not be loaded with {} elements", key, numel));
  tensor = tensor.narrow(0, 0, numel);
  Ref r = make(Value{.kind = Kind::Storage, .dtype = dtype, .s = key, .tensor = std::move(tensor)});
  storages_[key] = r;
  return r;
}

Ref Unpickler::call(Ref callable_ref, Ref args_ref, std::string_view how) {
  // Copies, not references: make() below may reallocate the arena.
  const Value c_value = arena_[callable_ref];
  const Value& c = c_value;
  if (c.kind != Kind::Global) throw error(fmt::format("{} of a {} (only whitelisted globals can be called)", how, kind_name(c.kind)));
  const std::vector<Ref> args = expect(args_ref, Kind::Tuple, fmt::format("{} arguments", how)).items;
  switch (c.callable) {
    case Callable::OrderedDict: {
      Ref d = make(Value{.kind = Kind::Dict});
      if (args.size() > 1) throw error("OrderedDict takes at most one argument");
      if (args.size() == 1) {  // OrderedDict([(k, v), ...])
        if (arena_[args[0]].kind != Kind::List && arena_[args[0]].kind != Kind::Tuple)
          throw error("OrderedDict argument must be a list of pairs");
        std::vector<Ref> kv;
        for (Ref p : arena_[args[0]].items) {
          const auto& pr = arena_[p];
          if (pr.kind != Kind::Tuple || pr.items.size() != 2) throw error("OrderedDict item is not a pair");
          kv.push_back(pr.items[0]);
          kv.push_back(pr.items[1]);
        }
        set_items(d, kv);
      }
      return d;
    }
    case Callable::RebuildTensorV2:
      return rebuild_tensor(args);
    case Callable::RebuildParameter:
    case Callable::RebuildParameterWithState: {
      if (args.size() < 3) throw error("_rebuild_parameter needs (data, requires_grad, backward_hooks)");
      expect(args[0], Kind::Tensor, "_rebuild_parameter data");
      return args[0];
    }
    case Callable::TorchClass:
      // A TorchScript module: an empty attribute container that BUILD fills; no code runs.
      return make(Value{.kind = Kind::Object, .s = c.s});
    case Callable::StorageType:
    case Callable::None:
      break;
  }
  throw error(fmt::format("{} of '{}' is not allowed", how, c.s));
}

void Unpickler::set_items(Ref dict, const std::vector<Ref>& kv) {
  if (arena_[dict].kind != Kind::Dict) throw error(fmt::format("SETITEM on a {}", kind_name(arena_[dict].kind)));
  if (kv.size() % 2) throw error("odd number of items for a dict");
  for (size_t i = 0; i < kv.size(); i += 2) {
    const auto kk = arena_[kv[i]].kind;
    if (kk != Kind::Str && kk != Kind::Int && kk != Kind::Bool && kk != Kind::None && kk != Kind::Float && kk != Kind::Tuple &&
        kk != Kind::Bytes)
      throw error(fmt::format("unhashable dict key of type {}", kind_name(kk)));
  }
  auto& items = arena_[dict].items;
  items.insert(items.end(), kv.begin(), kv.end());
}

void Unpickler::append(Ref list, const std::vector<Ref>& items) {
  if (arena_[list].kind != Kind::List) throw error(fmt::format("APPEND on a {}", kind_name(arena_[list].kind)));
  auto& dst = arena_[list].items;
  dst.insert(dst.end(), items.begin(), items.end());
}

void Unpickler::build(Ref obj, Ref state) {
  auto& o = arena_[obj];
  if (o.kind == Kind::Object) {
    if (!o.items.empty()) throw error(fmt::format("BUILD twice on '{}'", o.s));
    o.items.push_back(state);
    return;
  }
  // torch.save(OrderedDict) re-applies the instance __dict__ (the `_metadata` of a state dict).
  if (o.kind == Kind::Dict) return;
  if (o.kind == Kind::Tensor) return;  // _rebuild_parameter_with_state style extra state: ignored
  throw error(fmt::format("BUILD on a {}", kind_name(o.kind)));
}

Ref Unpickler::run() {
  for (;;) {
    op_pos_ = pos_;
    const uint8_t op = u8();
    switch (op) {
      case 0x80: {  // PROTO
        op_name_ = "PROTO";
        uint8_t v = u8();
        if (v > 5) throw error(fmt::format("pickle protocol {} is not supported (max 5)", v));
        break;
      }
      case 0x95:  // FRAME: framing is a hint for buffered readers; the whole input is in memory
        op_name_ = "FRAME";
        le<uint64_t>();
        break;
      case '.':  // STOP
        op_name_ = "STOP";
        if (!marks_.empty()) throw error("MARK left open at STOP");
        return pop();
      case '(':
        op_name_ = "MARK";
        marks_.push_back(stack_.size());
        break;
      case '0':
        op_name_ = "POP";
        pop();
        break;
      case '1':
        op_name_ = "POP_MARK";
        pop_mark();
        break;
      case '2':
        op_name_ = "DUP";
        push(top());
        break;
      case 'N':
        op_name_ = "NONE";
        push(make(Value{}));
        break;
      case 0x88:
      case 0x89:
        op_name_ = op == 0x88 ? "NEWTRUE" : "NEWFALSE";
        push(make(Value{.kind = Kind::Bool, .i = op == 0x88}));
        break;
      case 'J':
        op_name_ = "BININT";
        push(make_int(le<int32_t>()));
        break;
      case 'K':
        op_name_ = "BININT1";
        push(make_int(u8()));
        break;
      case 'M':
        op_name_ = "BININT2";
        push(make_int(le<uint16_t>()));
        break;
      case 0x8a:
      case 0x8b: {  // LONG1 / LONG4: little-endian two's complement of n bytes
        op_name_ = op == 0x8a ? "LONG1" : "LONG4";
        uint64_t n = op == 0x8a ? u8() : le<uint32_t>();
        if (n > 8) throw error(fmt::format("integer of {} bytes does not fit in 64 bits", n));
        const uint8_t* p = take(n);
        uint64_t v = 0;
        for (uint64_t k = 0; k < n; ++k) v |= uint64_t{p[k]} << (8 * k);
        if (n > 0 && n < 8 && (p[n - 1] & 0x80)) v |= ~uint64_t{0} << (8 * n);  // sign-extend
        push(make_int(static_cast<int64_t>(v)));
        break;
      }
      case 'G': {  // BINFLOAT: big-endian IEEE double
        op_name_ = "BINFLOAT";
        const uint8_t* p = take(8);
        uint64_t bits = 0;
        for (int k = 0; k < 8; ++k) bits = (bits << 8) | p[k];
        double d;
        std::memcpy(&d, &bits, 8);
        push(make(Value{.kind = Kind::Float, .f = d}));
        break;
      }
      case 'X':
      case 0x8c:
      case 0x8d:
      case 'T':
      case 'U': {  // BINUNICODE / SHORT_BINUNICODE / BINUNICODE8 / py2 BINSTRING / SHORT_BINSTRING
        op_name_ = op == 'X' ? "BINUNICODE" : op == 0x8c ? "SHORT_BINUNICODE" : op == 0x8d ? "BINUNICODE8" : "BINSTRING";
        uint64_t n = (op == 0x8c || op == 'U') ? u8() : op == 0x8d ? le<uint64_t>() : le<uint32_t>();
        push(make(Value{.kind = Kind::Str, .s = bytes(n)}));
        break;
      }
      case 'B':
      case 'C':
      case 0x8e: {  // BINBYTES / SHORT_BINBYTES / BINBYTES8
        op_name_ = "BINBYTES";
        uint64_t n = op == 'C' ? u8() : op == 0x8e ? le<uint64_t>() : le<uint32_t>();
        push(make(Value{.kind = Kind::Bytes, .s = bytes(n)}));
        break;
      }
      case ')':
        op_name_ = "EMPTY_TUPLE";
        push(make_seq(Kind::Tuple, {}));
        break;
      case 0x85:
      case 0x86:
      case 0x87: {  // TUPLE1..3
        op_name_ = fmt::format("TUPLE{}", op - 0x84);
        std::vector<Ref> items(op - 0x84);
        for (size_t k = items.size(); k-- > 0;) items[k] = pop();
        push(make_seq(Kind::Tuple, std::move(items)));
        break;
      }
      case 't':
        op_name_ = "TUPLE";
        push(make_seq(Kind::Tuple, pop_mark()));
        break;
      case ']':
        op_name_ = "EMPTY_LIST";
        push(make_seq(Kind::List, {}));
        break;
      case 'l':
        op_name_ = "LIST";
        push(make_seq(Kind::List, pop_mark()));
        break;
      case '}':
        op_name_ = "EMPTY_DICT";
        push(make(Value{.kind = Kind::Dict}));
        break;
      case 'd': {
        op_name_ = "DICT";
        auto kv = pop_mark();
        Ref d = make(Value{.kind = Kind::Dict});
        set_items(d, kv);
        push(d);
        break;
      }
      case 'a': {
        op_name_ = "APPEND";
        Ref v = pop();
        append(top(), {v});
        break;
      }
      case 'e': {
        op_name_ = "APPENDS";
        auto items = pop_mark();
        append(top(), items);
        break;
      }
      case 's': {
        op_name_ = "SETITEM";
        Ref v = pop();
        Ref k = pop();
        set_items(top(), {k, v});
        break;
      }
      case 'u': {
        op_name_ = "SETITEMS";
        auto kv = pop_mark();
        set_items(top(), kv);
        break;
      }
      case 'q':
        op_name_ = "BINPUT";
        memo_put(u8());
        break;
      case 'r':
        op_name_ = "LONG_BINPUT";
        memo_put(le<uint32_t>());
        break;
      case 0x94:
        op_name_ = "MEMOIZE";
        memo_put(memo_.size());
        break;
      case 'h':
        op_name_ = "BINGET";
        push(memo_get(u8()));
        break;
      case 'j':
        op_name_ = "LONG_BINGET";
        push(memo_get(le<uint32_t>()));
        break;
      case 'c': {  // GLOBAL "module\nname\n"
        op_name_ = "GLOBAL";
        auto module = line();
        auto name = line();
        push(global(module, name));
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        op_name_ = "STACK_GLOBAL";
        Ref name = pop();
        Ref module = pop();
        push(global(expect(module, Kind::Str, "STACK_GLOBAL module").s, expect(name, Kind::Str, "STACK_GLOBAL name").s));
        break;
      }
      case 'R': {
        op_name_ = "REDUCE";
        Ref args = pop();
        Ref fn = pop();
        push(call(fn, args, "REDUCE"));
        break;
      }
      case 0x81: {
        op_name_ = "NEWOBJ";
        Ref args = pop();
        Ref cls = pop();
        push(call(cls, args, "NEWOBJ"));
        break;
      }
      case 0x92: {
        op_name_ = "NEWOBJ_EX";
        Ref kwargs = pop();
        Ref args = pop();
        Ref cls = pop();
        if (arena_[kwargs].kind != Kind::Dict || !arena_[kwargs].items.empty()) throw error("NEWOBJ_EX with keyword arguments");
        push(call(cls, args, "NEWOBJ_EX"));
        break;
      }
      case 'b': {
        op_name_ = "BUILD";
        Ref state = pop();
        build(top(), state);
        break;
      }
      case 'Q': {
        op_name_ = "BINPERSID";
        Ref pid = pop();
        push(persistent_load(pid));
        break;
      }
      default:
        op_name_ = fmt::format("0x{:02x}", op);
        throw error(fmt::format("unsupported pickle opcode 0x{:02x} '{}'", op,
                                (op >= 0x20 && op < 0x7f) ? std::string(1, static_cast<char>(op)) : std::string("?")));
    }
  }
}

// Flattens dicts and module objects into dotted tensor names.
class Flattener {
 public:
  Flattener(const Unpickler& u, std::string_view what) : u_(u), what_(what) {}

  void walk(Ref r, const std::string& prefix, size_t depth) {
    const Value& v = u_.at(r);
    if (v.kind == Kind::Tensor) {
      if (prefix.empty()) throw u_.plain_error("pickle holds a single tensor, not a state dict");
      if (!out_.emplace(prefix, v.tensor).second) throw u_.plain_error(fmt::format("tensor name '{}' occurs twice", prefix));
      return;
    }
    const Value* dict = container(r);
    if (!dict) return;  // ints, strings, flags, lists: not weights
    if (depth > kMaxNesting) throw u_.plain_error(fmt::format("objects nested deeper than {} levels", kMaxNesting));
    if (!seen_.insert(r).second) throw u_.plain_error(fmt::format("object under '{}' is reached twice (shared or cyclic)", prefix));
    for (size_t i = 0; i + 1 < dict->items.size(); i += 2) {
      const Value& k = u_.at(dict->items[i]);
      std::string key;
      if (k.kind == Kind::Str) key = k.s;
      else if (k.kind == Kind::Int) key = std::to_string(k.i);
      else continue;  // a non-string key cannot name a weight
      walk(dict->items[i + 1], prefix.empty() ? key : prefix + "." + key, depth + 1);
    }
  }

  // The attribute dict of a module object, the dict itself, or null for leaves.
  const Value* container(Ref r) const {
    const Value& v = u_.at(r);
    if (v.kind == Kind::Dict) return &v;
    if (v.kind == Kind::Object && !v.items.empty() && u_.at(v.items[0]).kind == Kind::Dict) return &u_.at(v.items[0]);
    return nullptr;
  }

  // Whether `r` holds any tensor (bounded walk, for the `model`/`state_dict` choice).
  bool has_tensor(Ref r, size_t depth, std::unordered_set<Ref>& seen) const {
    if (u_.at(r).kind == Kind::Tensor) return true;
    const Value* d = container(r);
    if (!d || depth > kMaxNesting || !seen.insert(r).second) return false;
    for (size_t i = 1; i < d->items.size(); i += 2)
      if (has_tensor(d->items[i], depth + 1, seen)) return true;
    return false;
  }

  std::map<std::string, at::Tensor> take() { return std::move(out_); }

 private:
  const Unpickler& u_;
  std::string_view what_;
  std::map<std::string, at::Tensor> out_;
  std::unordered_set<Ref> seen_;
};

}  // namespace

UnpickledTensors unpickle_tensors(std::span<const uint8_t> pickle, const StorageLoader& load_storage, std::string_view what) {
  Unpickler u(pickle, load_storage, what);
  Ref root = u.run();
  Flattener f(u, what);
  UnpickledTensors out;
  const Value& top = u.at(root);
  out.torchscript = top.kind == Kind::Object;
  if (top.kind != Kind::Dict && top.kind != Kind::Object)
    throw u.plain_error(fmt::format("pickle holds a {}, not a state dict or module", kind_name(top.kind)));

  // Training checkpoints wrap the weights: {'model': sd, 'optimizer': ...} or {'state_dict': sd, ...}.
  Ref chosen = root;
  if (top.kind == Kind::Dict) {
    for (std::string_view wanted : {"state_dict", "model"}) {
      for (size_t i = 0; i + 1 < top.items.size(); i += 2) {
        const Value& k = u.at(top.items[i]);
        std::unordered_set<Ref> seen;
        if (k.kind == Kind::Str && k.s == wanted && f.container(top.items[i + 1]) && f.has_tensor(top.items[i + 1], 0, seen)) {
          chosen = top.items[i + 1];
          break;
        }
      }
      if (chosen != root) break;
    }
  }
  f.walk(chosen, "", 0);
  out.tensors = f.take();
  return out;
}

}  // namespace iadgpt::io
