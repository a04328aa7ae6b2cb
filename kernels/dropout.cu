// Dropout on the GPU with a counter-based generator, so that a captured CUDA graph draws a fresh
// mask on every replay; T is float or double.
//
// state = {seed, counter}: two unsigned 64-bit integers in device memory, owned by one Dropout layer.
// dropout_forward: one thread per element i. h = mix(mix(seed ^ counter * golden) + i), where mix is
//   SplitMix64's finalizer; u = (h >> 11) / 2^53 is uniform in [0, 1). mask[i] = u >= p ? scale : 0,
//   scale = 1 / (1 - p), and y[i] = x[i] * mask[i].
// rng_advance: one thread, counter += 1; launched after dropout_forward (stream order), so the next
//   mask differs and no thread of this one reads a half-updated counter.

__device__ __forceinline__ unsigned long long mix(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

template <typename T>
__global__ void dropout_forward(const T* __restrict__ x, T* __restrict__ y, T* __restrict__ mask, long long total,
                                double p, T scale, const unsigned long long* __restrict__ state) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    unsigned long long h = mix(mix(state[0] ^ (state[1] * 0x9e3779b97f4a7c15ULL)) + (unsigned long long)i);
    double u = (double)(h >> 11) * (1.0 / 9007199254740992.0);
    T keep = u >= p ? scale : T(0);
    mask[i] = keep;
    y[i] = x[i] * keep;
}

__global__ void rng_advance(unsigned long long* state) {
    if (blockIdx.x == 0 && threadIdx.x == 0) state[1] += 1ULL;
}

#ifdef MINICNN_INSTANTIATE
template __global__ void dropout_forward<float>(const float*, float*, float*, long long, double, float, const unsigned long long*);
template __global__ void dropout_forward<double>(const double*, double*, double*, long long, double, double, const unsigned long long*);
#endif
