// Scratch arrays that give their memory back to the OS when freed (torch-free): the
// selections' histograms, collected keys and candidate buffers (radix_select.h,
// task_merge_kernels.cpp). The C heap keeps freed pages resident and may hand them to
// the next, differently sized buffer, so one pass's freed histograms would stay
// resident beside the next phase's buffers: a call's phases would add up instead of
// taking turns within its memory budget. An array of kPageArrayMin bytes or more is
// mapped on its own (mmap) and unmapped when freed: its pages count only while it
// lives and only once written (a window's reserved candidate room costs what is
// stored), and they start as zeros (a fresh histogram needs no clearing). The cost:
// each new array faults its written pages in (~0.5 us a page), which is why the
// window's stored sample, 2 MiB a model in large calls, stays on the heap.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstring>
#include <new>
#include <utility>

namespace m2n2::cpu {

constexpr size_t kPageArrayMin = size_t(16) << 10;  // smaller arrays: the heap (a mapping costs a system call)

// n elements of a trivial type T, zero-initialised.
template <class T>
class PageArray {
 public:
  PageArray() = default;
  explicit PageArray(size_t n) { reset(n); }
  PageArray(const PageArray&) = delete;
  PageArray& operator=(const PageArray&) = delete;
  PageArray(PageArray&& o) noexcept { *this = std::move(o); }
  PageArray& operator=(PageArray&& o) noexcept {
    if (this != &o) {
      release();
      std::swap(data_, o.data_);
      std::swap(bytes_, o.bytes_);
      std::swap(mapped_, o.mapped_);
    }
    return *this;
  }
  ~PageArray() { release(); }

  // Frees the array, then allocates n zeros (never both at once).
  void reset(size_t n) {
    release();
    if (n == 0) return;
    bytes_ = n * sizeof(T);
    mapped_ = bytes_ >= kPageArrayMin;
    if (mapped_) {
      void* p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) throw std::bad_alloc();
      data_ = static_cast<T*>(p);
    } else {
      data_ = new T[n]();
    }
  }

  void release() {
    if (data_ == nullptr) return;
    if (mapped_) {
      munmap(data_, bytes_);
    } else {
      delete[] data_;
    }
    data_ = nullptr;
    bytes_ = 0;
  }

  T* get() const { return data_; }
  T& operator[](size_t i) const { return data_[i]; }

 private:
  T* data_ = nullptr;
  size_t bytes_ = 0;
  bool mapped_ = false;
};

}  // namespace m2n2::cpu
