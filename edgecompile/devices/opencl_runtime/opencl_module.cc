/*
 * The OpenCL runtime module: holds the OpenCL C source produced by TVM's codegen, builds one
 * program per kernel and device on first call, and launches kernels with the grid/block extents
 * that the host code passes after the kernel arguments.
 *
 * Registered global functions (names TVM 0.27 looks up):
 *   ffi.Module.load_from_bytes.opencl  Bytes -> Module          (loading an exported library)
 *   ffi.Module.create.opencl           (code, fmt, fmap, source) (codegen, instead of the
 *                                                                 compiler's source-only fallback)
 *
 * Serialised form (SaveToBytes; identical to TVM's OpenCL module and its codegen fallback),
 * little endian, strings and byte blobs as uint64 length + bytes:
 *   fmt: string ("cl")
 *   fmap: uint64 count, then per entry: key string, FunctionInfo =
 *         name string, arg_types (uint64 n, n x {uint8 code, uint8 bits, uint16 lanes}),
 *         launch_param_tags (uint64 n, n strings), arg_extra_tags (uint64 n, n x int32)
 *   code: bytes (the OpenCL C source, one "// Function: <name>" section per kernel)
 */
#include <tvm/ffi/cast.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/memory.h>
#include <tvm/ffi/reflection/registry.h>
#include <tvm/ffi/string.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "opencl_common.h"

namespace edgecompile {
namespace ocl {

namespace ffi = ::tvm::ffi;

/*
 * Same object layout and type key as tvm::runtime::FunctionInfoObj (src/runtime/metadata.h in
 * the wheel), which cannot be included: it needs tvm/support headers the wheel does not ship.
 * Only used to read the function table that codegen passes to ffi.Module.create.opencl.
 */
enum class ArgExtraTag : int { kNone = 0, kTensorMap = 1 };
class FunctionInfoView : public ffi::Object {
 public:
  ffi::String name;
  ffi::Array<DLDataType> arg_types;
  ffi::Array<ffi::String> launch_param_tags;
  ffi::Array<ArgExtraTag> arg_extra_tags;
  TVM_FFI_DECLARE_OBJECT_INFO_FINAL("runtime.FunctionInfo", FunctionInfoView, ffi::Object);
};

/*! \brief Plain copy of one kernel's FunctionInfo. */
struct KernelInfo {
  std::string key;   // the fmap key: the name the host code looks the kernel up by
  std::string name;  // FunctionInfo.name (the same string in practice)
  std::vector<DLDataType> arg_types;
  std::vector<std::string> launch_param_tags;
  std::vector<int32_t> arg_extra_tags;
};

// ---------------------------------------------------------------- byte stream helpers
class Reader {
 public:
  Reader(const char* data, size_t size) : p_(data), end_(data + size) {}
  template <typename T>
  T Pod() {
    T v;
    Need(sizeof(T));
    std::memcpy(&v, p_, sizeof(T));  // little-endian hosts only (x86_64, aarch64)
    p_ += sizeof(T);
    return v;
  }
  std::string Str() {
    uint64_t n = Pod<uint64_t>();
    Need(n);
    std::string s(p_, p_ + n);
    p_ += n;
    return s;
  }
  bool AtEnd() const { return p_ == end_; }

 private:
  void Need(uint64_t n) {
    if (static_cast<uint64_t>(end_ - p_) < n) {
      TVM_FFI_THROW(ValueError) << "truncated OpenCL module blob";
    }
  }
  const char* p_;
  const char* end_;
};

class Writer {
 public:
  explicit Writer(std::string* out) : out_(out) {}
  template <typename T>
  void Pod(T v) {
    out_->append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  void Str(const std::string& s) {
    Pod<uint64_t>(s.size());
    out_->append(s);
  }

 private:
  std::string* out_;
};

// ---------------------------------------------------------------- launch parameters
struct LaunchConfig {
  // index into work[0..5]: 0-2 blockIdx.{x,y,z} (number of groups), 3-5 threadIdx.{x,y,z}
  std::vector<int> slots;
  bool dyn_shmem{false};
  cl_uint work_dim{1};

  explicit LaunchConfig(const std::vector<std::string>& tags) {
    bool filled[6] = {false, false, false, false, false, false};
    for (size_t i = 0; i < tags.size(); ++i) {
      const std::string& t = tags[i];
      if (t == "tirx.use_dyn_shared_memory") {
        TVM_FFI_ICHECK_EQ(i, tags.size() - 1) << "dynamic shared memory tag must come last";
        dyn_shmem = true;
      } else if (t.rfind("tirx.", 0) == 0) {
        // programmatic-dependent / cooperative launch, required block dimension: CUDA notions
        // without an OpenCL 1.2 counterpart; the kernel runs correctly without them.
      } else if (t.size() == 10 && t.compare(0, 9, "blockIdx.") == 0 && t[9] >= 'x' &&
                 t[9] <= 'z') {
        slots.push_back(t[9] - 'x');
      } else if (t.size() == 11 && t.compare(0, 10, "threadIdx.") == 0 && t[10] >= 'x' &&
                 t[10] <= 'z') {
        slots.push_back(3 + (t[10] - 'x'));
      } else {
        TVM_FFI_THROW(ValueError) << "OpenCL: unsupported launch parameter tag '" << t << "'";
      }
      if (!slots.empty()) filled[slots.back()] = true;
    }
    for (int d = 0; d < 3; ++d) {
      if (filled[d] || filled[d + 3]) work_dim = d + 1;
    }
  }
  size_t NumArgs() const { return slots.size() + (dyn_shmem ? 1 : 0); }
};

// ---------------------------------------------------------------- module
class OpenCLModuleObj : public ffi::ModuleObj {
 public:
  OpenCLModuleObj(std::string fmt, std::vector<KernelInfo> fmap, std::string code,
                  ffi::Map<ffi::String, ffi::String> source)
      : fmt_(std::move(fmt)), fmap_(std::move(fmap)), code_(std::move(code)),
        source_(std::move(source)) {
    if (fmt_ != "cl") return;  // binary formats are kept (and saved) but cannot be launched
    // Split "// Function: <name>\n" sections; text before the first marker is a shared preamble.
    const std::string marker = "// Function: ";
    size_t pos = code_.find(marker);
    preamble_ = code_.substr(0, pos == std::string::npos ? code_.size() : pos);
    while (pos != std::string::npos) {
      size_t name_begin = pos + marker.size();
      size_t name_end = code_.find('\n', name_begin);
      if (name_end == std::string::npos) name_end = code_.size();
      std::string name = code_.substr(name_begin, name_end - name_begin);
      size_t next = code_.find(marker, name_end);
      size_t body_begin = std::min(name_end + 1, code_.size());
      sections_[name] = code_.substr(body_begin, (next == std::string::npos ? code_.size() : next) -
                                                      body_begin);
      pos = next;
    }
  }

  ~OpenCLModuleObj() {
    const CLApi& cl = API();
    if (!cl.loaded) return;
    for (auto& kv : kernels_) {
      for (cl_kernel k : kv.second->kernels) {
        if (k) cl.ReleaseKernel(k);
      }
      for (cl_program p : kv.second->programs) {
        if (p) cl.ReleaseProgram(p);
      }
    }
  }

  const char* kind() const final { return "opencl"; }
  int GetPropertyMask() const final {
    return ffi::Module::kBinarySerializable | ffi::Module::kRunnable;
  }

  ffi::Bytes SaveToBytes() const final {
    std::string out;
    Writer w(&out);
    w.Str(fmt_);
    w.Pod<uint64_t>(fmap_.size());
    for (const KernelInfo& k : fmap_) {
      w.Str(k.key);
      w.Str(k.name);
      w.Pod<uint64_t>(k.arg_types.size());
      for (const DLDataType& t : k.arg_types) {
        w.Pod<uint8_t>(t.code);
        w.Pod<uint8_t>(t.bits);
        w.Pod<uint16_t>(t.lanes);
      }
      w.Pod<uint64_t>(k.launch_param_tags.size());
      for (const std::string& s : k.launch_param_tags) w.Str(s);
      w.Pod<uint64_t>(k.arg_extra_tags.size());
      for (int32_t e : k.arg_extra_tags) w.Pod<int32_t>(e);
    }
    w.Str(code_);
    return ffi::Bytes(out);
  }

  ffi::String InspectSource(const ffi::String& format) const final {
    if (auto it = source_.find(format); it != source_.end()) return (*it).second;
    if ((format.empty() || format == "cl") && fmt_ == "cl") return ffi::String(code_);
    return ffi::String();
  }

  ffi::Optional<ffi::Function> GetFunction(const ffi::String& name) final;

  static ffi::Module LoadFromBytes(const ffi::Bytes& bytes) {
    Reader r(bytes.data(), bytes.size());
    std::string fmt = r.Str();
    uint64_t n = r.Pod<uint64_t>();
    std::vector<KernelInfo> fmap;
    for (uint64_t i = 0; i < n; ++i) {
      KernelInfo k;
      k.key = r.Str();
      k.name = r.Str();
      uint64_t na = r.Pod<uint64_t>();
      for (uint64_t j = 0; j < na; ++j) {
        DLDataType t;
        t.code = r.Pod<uint8_t>();
        t.bits = r.Pod<uint8_t>();
        t.lanes = r.Pod<uint16_t>();
        k.arg_types.push_back(t);
      }
      uint64_t nt = r.Pod<uint64_t>();
      for (uint64_t j = 0; j < nt; ++j) k.launch_param_tags.push_back(r.Str());
      uint64_t ne = r.Pod<uint64_t>();
      for (uint64_t j = 0; j < ne; ++j) k.arg_extra_tags.push_back(r.Pod<int32_t>());
      fmap.push_back(std::move(k));
    }
    std::string code = r.Str();
    TVM_FFI_ICHECK(r.AtEnd()) << "OpenCL module blob has trailing bytes: unknown format";
    return ffi::Module(ffi::make_object<OpenCLModuleObj>(std::move(fmt), std::move(fmap),
                                                         std::move(code),
                                                         ffi::Map<ffi::String, ffi::String>()));
  }

 private:
  struct KernelEntry {
    std::mutex mu;  // clSetKernelArg + enqueue must not interleave between threads
    std::vector<cl_program> programs;
    std::vector<cl_kernel> kernels;
    std::vector<cl_uint> num_args;
  };

  /*! \brief Build the program for one kernel on one device (under entry->mu). */
  cl_kernel Install(KernelEntry* entry, const std::string& name, int device_id) {
    Workspace* w = Workspace::Global();
    const DeviceEntry& dev = w->Device(device_id);
    const CLApi& cl = API();
    if (entry->kernels.size() <= static_cast<size_t>(device_id)) {
      entry->programs.resize(device_id + 1, nullptr);
      entry->kernels.resize(device_id + 1, nullptr);
      entry->num_args.resize(device_id + 1, 0);
    }
    auto sec = sections_.find(name);
    if (fmt_ != "cl" || sec == sections_.end()) {
      TVM_FFI_THROW(RuntimeError) << "OpenCL module: no OpenCL C source for kernel '" << name
                                  << "' (format '" << fmt_ << "'; only 'cl' can be launched)";
    }
    std::string src = preamble_ + sec->second;
    const char* s = src.c_str();
    size_t len = src.size();
    cl_int err = CL_SUCCESS;
    cl_program prog = cl.CreateProgramWithSource(dev.context, 1, &s, &len, &err);
    EDGECOMPILE_CL_CALL(err);
    const char* opts = std::getenv("EDGECOMPILE_OPENCL_BUILD_OPTIONS");
    err = cl.BuildProgram(prog, 1, &dev.id, opts ? opts : "", nullptr, nullptr);
    if (err != CL_SUCCESS) {
      size_t log_len = 0;
      cl.GetProgramBuildInfo(prog, dev.id, CL_PROGRAM_BUILD_LOG, 0, nullptr, &log_len);
      std::string log(log_len, '\0');
      if (log_len) {
        cl.GetProgramBuildInfo(prog, dev.id, CL_PROGRAM_BUILD_LOG, log_len, &log[0], nullptr);
      }
      cl.ReleaseProgram(prog);
      TVM_FFI_THROW(RuntimeError) << "OpenCL build of kernel '" << name << "' failed on "
                                  << dev.name << ": " << ErrorString(err) << "\n" << log;
    }
    cl_kernel k = cl.CreateKernel(prog, name.c_str(), &err);
    if (err != CL_SUCCESS) cl.ReleaseProgram(prog);
    EDGECOMPILE_CL_CALL(err);
    cl_uint nargs = 0;
    EDGECOMPILE_CL_CALL(cl.GetKernelInfo(k, CL_KERNEL_NUM_ARGS, sizeof(nargs), &nargs, nullptr));
    entry->programs[device_id] = prog;
    entry->kernels[device_id] = k;
    entry->num_args[device_id] = nargs;
    return k;
  }

  std::string fmt_;
  std::vector<KernelInfo> fmap_;
  std::string code_;
  ffi::Map<ffi::String, ffi::String> source_;
  std::string preamble_;
  std::unordered_map<std::string, std::string> sections_;
  std::mutex mu_;
  std::unordered_map<std::string, std::unique_ptr<KernelEntry>> kernels_;
};

namespace {

int64_t AsInt(const TVMFFIAny& a) {
  return a.type_index == ffi::TypeIndex::kTVMFFIFloat ? static_cast<int64_t>(a.v_float64)
                                                       : a.v_int64;
}
double AsFloat(const TVMFFIAny& a) {
  return a.type_index == ffi::TypeIndex::kTVMFFIFloat ? a.v_float64
                                                       : static_cast<double>(a.v_int64);
}

}  // namespace

ffi::Optional<ffi::Function> OpenCLModuleObj::GetFunction(const ffi::String& name) {
  const KernelInfo* info = nullptr;
  for (const KernelInfo& k : fmap_) {
    if (k.key == name.operator std::string()) info = &k;
  }
  if (info == nullptr) return std::nullopt;
  for (const DLDataType& t : info->arg_types) {
    bool ok = t.lanes == 1 &&
              (t.code == kDLOpaqueHandle ||
               ((t.code == kDLInt || t.code == kDLUInt) &&
                (t.bits == 8 || t.bits == 16 || t.bits == 32 || t.bits == 64)) ||
               (t.code == kDLFloat && (t.bits == 32 || t.bits == 64)));
    if (!ok) {
      TVM_FFI_THROW(ValueError) << "OpenCL kernel '" << info->key << "': argument type (code "
                                << int(t.code) << ", bits " << int(t.bits) << ", lanes "
                                << t.lanes << ") cannot be passed to a kernel";
    }
  }
  KernelEntry* entry;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto& slot = kernels_[info->key];
    if (!slot) slot = std::make_unique<KernelEntry>();
    entry = slot.get();
  }
  auto self = ffi::GetObjectPtr<ffi::Object>(this);  // keeps the module (and entry) alive
  auto launch = std::make_shared<LaunchConfig>(info->launch_param_tags);
  std::string kname = info->key;
  std::vector<DLDataType> types = info->arg_types;
  return ffi::Function([self, this, entry, launch, kname, types](ffi::PackedArgs args,
                                                                  ffi::Any* rv) {
    const size_t nargs = types.size();
    if (static_cast<size_t>(args.size()) != nargs + launch->NumArgs()) {
      TVM_FFI_THROW(ValueError) << "OpenCL kernel '" << kname << "' expects "
                                << nargs + launch->NumArgs() << " packed arguments, got "
                                << args.size();
    }
    const TVMFFIAny* raw = reinterpret_cast<const TVMFFIAny*>(args.data());
    const int device_id = CurrentDeviceId();
    const CLApi& cl = API();
    cl_command_queue queue = Workspace::Global()->Queue(device_id);

    size_t work[6] = {1, 1, 1, 1, 1, 1};
    for (size_t i = 0; i < launch->slots.size(); ++i) {
      int64_t v = raw[nargs + i].v_int64;
      if (v > 0) work[launch->slots[i]] = static_cast<size_t>(v);
    }
    size_t dyn_shmem = launch->dyn_shmem
                           ? static_cast<size_t>(raw[nargs + launch->slots.size()].v_int64)
                           : 0;

    std::lock_guard<std::mutex> lock(entry->mu);
    cl_kernel k = static_cast<size_t>(device_id) < entry->kernels.size()
                      ? entry->kernels[device_id]
                      : nullptr;
    if (k == nullptr) k = Install(entry, kname, device_id);
    for (size_t i = 0; i < nargs; ++i) {
      const DLDataType& t = types[i];
      const TVMFFIAny& a = raw[i];
      cl_uint idx = static_cast<cl_uint>(i);
      if (t.code == kDLOpaqueHandle) {
        void* p = a.v_ptr;
        if (a.type_index == ffi::TypeIndex::kTVMFFIDLTensorPtr) p = static_cast<DLTensor*>(p)->data;
        if (a.type_index == ffi::TypeIndex::kTVMFFINone) p = nullptr;
        cl_mem mem = static_cast<cl_mem>(p);
        EDGECOMPILE_CL_CALL(cl.SetKernelArg(k, idx, sizeof(cl_mem), &mem));
      } else if (t.code == kDLFloat) {
        if (t.bits == 32) {
          float f = static_cast<float>(AsFloat(a));
          EDGECOMPILE_CL_CALL(cl.SetKernelArg(k, idx, sizeof(f), &f));
        } else {
          double d = AsFloat(a);
          EDGECOMPILE_CL_CALL(cl.SetKernelArg(k, idx, sizeof(d), &d));
        }
      } else {
        int64_t v = AsInt(a);
        union {
          int8_t i8;
          int16_t i16;
          int32_t i32;
          int64_t i64;
        } u;
        switch (t.bits) {
          case 8: u.i8 = static_cast<int8_t>(v); break;
          case 16: u.i16 = static_cast<int16_t>(v); break;
          case 32: u.i32 = static_cast<int32_t>(v); break;
          default: u.i64 = v; break;
        }
        EDGECOMPILE_CL_CALL(cl.SetKernelArg(k, idx, t.bits / 8, &u));
      }
    }
    // A kernel declared with one more parameter than TVM's arguments takes its dynamic
    // __local buffer there; kernels without one keep their shared memory static.
    if (launch->dyn_shmem && entry->num_args[device_id] == nargs + 1) {
      EDGECOMPILE_CL_CALL(
          cl.SetKernelArg(k, static_cast<cl_uint>(nargs), dyn_shmem > 0 ? dyn_shmem : 1, nullptr));
    }
    size_t global[3], local[3];
    for (int d = 0; d < 3; ++d) {
      global[d] = work[d] * work[d + 3];
      local[d] = work[d + 3];
    }
    EDGECOMPILE_CL_CALL(cl.EnqueueNDRangeKernel(queue, k, launch->work_dim, nullptr, global, local,
                                                0, nullptr, nullptr));
  });
}

TVM_FFI_STATIC_INIT_BLOCK() {
  // See opencl_device_api.cc: the first OpenCL runtime registered wins.
  if (ffi::Function::GetGlobal("ffi.Module.load_from_bytes.opencl").has_value()) return;
  namespace refl = tvm::ffi::reflection;
  refl::GlobalDef()
      .def("ffi.Module.load_from_bytes.opencl",
           [](const ffi::Bytes& bytes) { return OpenCLModuleObj::LoadFromBytes(bytes); })
      .def("ffi.Module.create.opencl",
           [](ffi::Bytes code, ffi::String fmt, ffi::Map<ffi::String, ffi::ObjectRef> fmap,
              ffi::Map<ffi::String, ffi::String> source) {
             std::vector<KernelInfo> infos;
             for (const auto& kv : fmap) {
               const FunctionInfoView* v = kv.second.as<FunctionInfoView>();
               TVM_FFI_ICHECK(v != nullptr) << "ffi.Module.create.opencl: entry '" << kv.first
                                            << "' is not a runtime.FunctionInfo";
               KernelInfo k;
               k.key = kv.first;
               k.name = v->name;
               for (size_t i = 0; i < v->arg_types.size(); ++i) {
                 k.arg_types.push_back(v->arg_types[i]);
               }
               for (size_t i = 0; i < v->launch_param_tags.size(); ++i) {
                 k.launch_param_tags.push_back(v->launch_param_tags[i]);
               }
               for (size_t i = 0; i < v->arg_extra_tags.size(); ++i) {
                 k.arg_extra_tags.push_back(static_cast<int32_t>(v->arg_extra_tags[i]));
               }
               infos.push_back(std::move(k));
             }
             return ffi::Module(ffi::make_object<OpenCLModuleObj>(
                 std::string(fmt), std::move(infos), std::string(code.data(), code.size()),
                 std::move(source)));
           });
}

}  // namespace ocl
}  // namespace edgecompile
