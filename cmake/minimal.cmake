# IADGPT_MINIMAL=ON: the libraries io, nn, vision and llm and the program iadgpt-min, for a machine
# that has libtorch (e.g. a CUDA PyTorch) and little else (scripts/gpu-check.sh). fmt, nlohmann-json
# and CLI11 are header-only here: installed ones are used when CMake finds them, else the headers in
# IADGPT_VENDOR_INCLUDE (`scripts/gpu-check.sh --pack` copies them there, with zlib.h).
set(IADGPT_VENDOR_INCLUDE "" CACHE PATH "fmt/, nlohmann/, CLI/ and zlib.h for a minimal build without those packages")

function(iadgpt_header_library target package)
  find_package(${package} QUIET)
  if(NOT TARGET ${target})
    if(NOT IADGPT_VENDOR_INCLUDE)
      message(FATAL_ERROR "IADGPT_MINIMAL: ${package} not found; give -DIADGPT_VENDOR_INCLUDE=DIR (scripts/gpu-check.sh --pack)")
    endif()
    string(REPLACE "::" "_" local ${target})
    add_library(iadgpt_vendor_${local} INTERFACE)
    target_include_directories(iadgpt_vendor_${local} SYSTEM INTERFACE ${IADGPT_VENDOR_INCLUDE})
    add_library(${target} ALIAS iadgpt_vendor_${local})
  endif()
endfunction()

iadgpt_header_library(nlohmann_json::nlohmann_json nlohmann_json)
iadgpt_header_library(CLI11::CLI11 CLI11)
find_package(fmt QUIET)
if(NOT TARGET fmt::fmt)
  iadgpt_header_library(fmt::fmt fmt)
  add_compile_definitions(FMT_HEADER_ONLY=1)  # no libfmt to link: the header-only build
endif()

# zlib (the zip checkpoint reader): the development package, else its header from the vendor
# folder and the runtime library every Linux has.
find_package(ZLIB QUIET)
if(NOT TARGET ZLIB::ZLIB)
  find_library(IADGPT_LIBZ NAMES z libz.so.1 REQUIRED)
  add_library(iadgpt_vendor_zlib INTERFACE)
  target_include_directories(iadgpt_vendor_zlib SYSTEM INTERFACE ${IADGPT_VENDOR_INCLUDE})
  target_link_libraries(iadgpt_vendor_zlib INTERFACE ${IADGPT_LIBZ})
  add_library(ZLIB::ZLIB ALIAS iadgpt_vendor_zlib)
endif()
find_package(Threads REQUIRED)
