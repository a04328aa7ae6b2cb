// Elementwise activations; T is float or double. One thread per element.
//
// relu_forward: y = max(x, 0) (NaN passes through), mask = x > 0.
// bias_relu: fused conv/linear epilogue on y (N, C, L): y = max(y + b[c], 0) in place,
//   c = (i / L) % C, with the mask kept for backward.

template <typename T>
__global__ void relu_forward(const T* __restrict__ x, T* __restrict__ y, bool* __restrict__ mask, long long total) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    T v = x[i];
    mask[i] = v > T(0);
    y[i] = (v > T(0) || v != v) ? v : T(0);
}

template <typename T>
__global__ void bias_relu(T* __restrict__ y, const T* __restrict__ bias, bool* __restrict__ mask,
                          long long total, int C, int L) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    T v = y[i] + bias[(i / L) % C];
    mask[i] = v > T(0);
    y[i] = v > T(0) ? v : T(0);
}

#ifdef MINICNN_INSTANTIATE
template __global__ void relu_forward<float>(const float*, float*, bool*, long long);
template __global__ void relu_forward<double>(const double*, double*, bool*, long long);
template __global__ void bias_relu<float>(float*, const float*, bool*, long long, int, int);
template __global__ void bias_relu<double>(double*, const double*, bool*, long long, int, int);
#endif
