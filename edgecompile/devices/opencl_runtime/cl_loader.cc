/*
 * Opens the OpenCL library with dlopen() and resolves the entry points of cl_loader.h.
 */
#include "cl_loader.h"

#include <dlfcn.h>

#include <cstdlib>
#include <vector>

namespace edgecompile {
namespace ocl {

namespace {

template <typename Fn>
bool Resolve(void* lib, const char* name, Fn* slot, std::string* missing) {
  *slot = reinterpret_cast<Fn>(dlsym(lib, name));
  if (*slot == nullptr) {
    if (!missing->empty()) *missing += ", ";
    *missing += name;
    return false;
  }
  return true;
}

CLApi* Load() {
  CLApi* api = new CLApi();  // intentionally leaked: kernels may be released during exit
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("EDGECOMPILE_OPENCL_LIBRARY")) {
    if (*env) candidates.emplace_back(env);
  }
  for (const char* c : {"libOpenCL.so.1", "libOpenCL.so", "/system/vendor/lib64/libOpenCL.so",
                        "/vendor/lib64/libOpenCL.so", "/system/lib64/libOpenCL.so",
                        "/system/vendor/lib64/egl/libGLES_mali.so", "libmali.so"}) {
    candidates.emplace_back(c);
  }
  void* lib = nullptr;
  std::string tried;
  for (const std::string& c : candidates) {
    lib = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib != nullptr) {
      api->origin = c;
      break;
    }
    const char* err = dlerror();
    tried += "\n  " + c + ": " + (err ? err : "not found");
  }
  if (lib == nullptr) {
    api->origin = "no OpenCL library could be opened:" + tried;
    return api;
  }
  std::string missing;
  bool ok = true;
  ok &= Resolve(lib, "clGetPlatformIDs", &api->GetPlatformIDs, &missing);
  ok &= Resolve(lib, "clGetPlatformInfo", &api->GetPlatformInfo, &missing);
  ok &= Resolve(lib, "clGetDeviceIDs", &api->GetDeviceIDs, &missing);
  ok &= Resolve(lib, "clGetDeviceInfo", &api->GetDeviceInfo, &missing);
  ok &= Resolve(lib, "clCreateContext", &api->CreateContext, &missing);
  ok &= Resolve(lib, "clReleaseContext", &api->ReleaseContext, &missing);
  ok &= Resolve(lib, "clCreateCommandQueue", &api->CreateCommandQueue, &missing);
  ok &= Resolve(lib, "clReleaseCommandQueue", &api->ReleaseCommandQueue, &missing);
  ok &= Resolve(lib, "clFinish", &api->Finish, &missing);
  ok &= Resolve(lib, "clCreateBuffer", &api->CreateBuffer, &missing);
  ok &= Resolve(lib, "clReleaseMemObject", &api->ReleaseMemObject, &missing);
  ok &= Resolve(lib, "clEnqueueReadBuffer", &api->EnqueueReadBuffer, &missing);
  ok &= Resolve(lib, "clEnqueueWriteBuffer", &api->EnqueueWriteBuffer, &missing);
  ok &= Resolve(lib, "clEnqueueCopyBuffer", &api->EnqueueCopyBuffer, &missing);
  ok &= Resolve(lib, "clCreateProgramWithSource", &api->CreateProgramWithSource, &missing);
  ok &= Resolve(lib, "clBuildProgram", &api->BuildProgram, &missing);
  ok &= Resolve(lib, "clGetProgramBuildInfo", &api->GetProgramBuildInfo, &missing);
  ok &= Resolve(lib, "clReleaseProgram", &api->ReleaseProgram, &missing);
  ok &= Resolve(lib, "clCreateKernel", &api->CreateKernel, &missing);
  ok &= Resolve(lib, "clGetKernelInfo", &api->GetKernelInfo, &missing);
  ok &= Resolve(lib, "clReleaseKernel", &api->ReleaseKernel, &missing);
  ok &= Resolve(lib, "clSetKernelArg", &api->SetKernelArg, &missing);
  ok &= Resolve(lib, "clEnqueueNDRangeKernel", &api->EnqueueNDRangeKernel, &missing);
  if (!ok) {
    api->origin += " lacks: " + missing;
    return api;
  }
  api->loaded = true;
  return api;
}

}  // namespace

const CLApi& API() {
  static CLApi* api = Load();  // thread-safe static initialisation
  return *api;
}

const char* ErrorString(cl_int code) {
  switch (code) {
    case 0: return "CL_SUCCESS";
    case -1: return "CL_DEVICE_NOT_FOUND";
    case -2: return "CL_DEVICE_NOT_AVAILABLE";
    case -3: return "CL_COMPILER_NOT_AVAILABLE";
    case -4: return "CL_MEM_OBJECT_ALLOCATION_FAILURE";
    case -5: return "CL_OUT_OF_RESOURCES";
    case -6: return "CL_OUT_OF_HOST_MEMORY";
    case -7: return "CL_PROFILING_INFO_NOT_AVAILABLE";
    case -8: return "CL_MEM_COPY_OVERLAP";
    case -11: return "CL_BUILD_PROGRAM_FAILURE";
    case -30: return "CL_INVALID_VALUE";
    case -32: return "CL_INVALID_PLATFORM";
    case -33: return "CL_INVALID_DEVICE";
    case -34: return "CL_INVALID_CONTEXT";
    case -36: return "CL_INVALID_COMMAND_QUEUE";
    case -38: return "CL_INVALID_MEM_OBJECT";
    case -44: return "CL_INVALID_PROGRAM";
    case -45: return "CL_INVALID_PROGRAM_EXECUTABLE";
    case -46: return "CL_INVALID_KERNEL_NAME";
    case -48: return "CL_INVALID_KERNEL";
    case -49: return "CL_INVALID_ARG_INDEX";
    case -50: return "CL_INVALID_ARG_VALUE";
    case -51: return "CL_INVALID_ARG_SIZE";
    case -52: return "CL_INVALID_KERNEL_ARGS";
    case -53: return "CL_INVALID_WORK_DIMENSION";
    case -54: return "CL_INVALID_WORK_GROUP_SIZE";
    case -55: return "CL_INVALID_WORK_ITEM_SIZE";
    case -56: return "CL_INVALID_GLOBAL_OFFSET";
    case -61: return "CL_INVALID_BUFFER_SIZE";
    case -63: return "CL_INVALID_GLOBAL_WORK_SIZE";
    case -1001: return "CL_PLATFORM_NOT_FOUND_KHR";
    default: return "CL_UNKNOWN_ERROR";
  }
}

}  // namespace ocl
}  // namespace edgecompile
