// Elementwise activations; T is float or double. One thread per element.
//
// relu_forward: y = max(x, 0) (NaN passes through).
// relu_backward: dx = 0 where y <= 0, else dy (NaN passes, as in torch); y is all it needs.

template <typename T>
__global__ void relu_forward(const T* __restrict__ x, T* __restrict__ y, long long total) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    T v = x[i];
    y[i] = (v > T(0) || v != v) ? v : T(0);
}

template <typename T>
__global__ void relu_backward(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx,
                              long long total) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    dx[i] = y[i] <= T(0) ? T(0) : dy[i];
}

#ifdef MINICNN_INSTANTIATE
template __global__ void relu_forward<float>(const float*, float*, long long);
template __global__ void relu_forward<double>(const double*, double*, long long);
template __global__ void relu_backward<float>(const float*, const float*, float*, long long);
template __global__ void relu_backward<double>(const double*, const double*, double*, long long);
#endif
