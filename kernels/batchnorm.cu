// Batch-norm training forward and backward on x3 (N, C, L); T is float or double.
//
// One block per channel c (gridDim.x = C), blockDim.x = 256 threads (a power of two). Thread t
// visits elements j = t, t + 256, ... of the channel's M = N*L values, element j being
// x3[(j / L) * C * L + c * L + j % L]. Sums are reduced in shared memory in a fixed tree order,
// so results are repeatable. Forward: mean, biased var, invstd = 1/sqrt(var + eps), then
// xhat = (x - mean) * invstd and y = gamma * xhat + beta. Backward: dbeta = sum(dy),
// dgamma = sum(dy * xhat), dx = gamma * invstd / M * (M * dy - dbeta - xhat * dgamma).

#define BN_THREADS 256

template <typename T>
__device__ T block_sum(T value, T* shared) {
    int t = threadIdx.x;
    shared[t] = value;
    __syncthreads();
    for (int stride = BN_THREADS / 2; stride > 0; stride >>= 1) {
        if (t < stride) shared[t] += shared[t + stride];
        __syncthreads();
    }
    T total = shared[0];
    __syncthreads();
    return total;
}

template <typename T>
__global__ void bn_forward_train(const T* __restrict__ x, const T* __restrict__ gamma, const T* __restrict__ beta,
                                 T eps, int N, int C, int L, T* __restrict__ y, T* __restrict__ xhat,
                                 T* __restrict__ mean, T* __restrict__ var, T* __restrict__ invstd) {
    __shared__ T shared[BN_THREADS];
    int c = blockIdx.x;
    long long M = (long long)N * L;
    T s = T(0);
    for (long long j = threadIdx.x; j < M; j += BN_THREADS) s += x[(j / L) * C * L + (long long)c * L + j % L];
    T m = block_sum(s, shared) / T(M);
    T ss = T(0);
    for (long long j = threadIdx.x; j < M; j += BN_THREADS) {
        T d = x[(j / L) * C * L + (long long)c * L + j % L] - m;
        ss += d * d;
    }
    T v = block_sum(ss, shared) / T(M);
    T r = T(1) / sqrt(v + eps);
    if (threadIdx.x == 0) { mean[c] = m; var[c] = v; invstd[c] = r; }
    for (long long j = threadIdx.x; j < M; j += BN_THREADS) {
        long long e = (j / L) * C * L + (long long)c * L + j % L;
        T h = (x[e] - m) * r;
        xhat[e] = h;
        y[e] = h * gamma[c] + beta[c];
    }
}

template <typename T>
__global__ void bn_backward_train(const T* __restrict__ dy, const T* __restrict__ xhat, const T* __restrict__ invstd,
                                  const T* __restrict__ gamma, int N, int C, int L, T* __restrict__ dx,
                                  T* __restrict__ dgamma, T* __restrict__ dbeta) {
    __shared__ T shared[BN_THREADS];
    int c = blockIdx.x;
    long long M = (long long)N * L;
    T sb = T(0), sg = T(0);
    for (long long j = threadIdx.x; j < M; j += BN_THREADS) {
        long long e = (j / L) * C * L + (long long)c * L + j % L;
        sb += dy[e];
        sg += dy[e] * xhat[e];
    }
    sb = block_sum(sb, shared);
    sg = block_sum(sg, shared);
    if (threadIdx.x == 0) { dbeta[c] = sb; dgamma[c] = sg; }
    T scale = gamma[c] * invstd[c] / T(M);
    for (long long j = threadIdx.x; j < M; j += BN_THREADS) {
        long long e = (j / L) * C * L + (long long)c * L + j % L;
        dx[e] = scale * (T(M) * dy[e] - sb - xhat[e] * sg);
    }
}

#ifdef MINICNN_INSTANTIATE
#define BN(T) \
template __global__ void bn_forward_train<T>(const T*, const T*, const T*, T, int, int, int, T*, T*, T*, T*, T*); \
template __global__ void bn_backward_train<T>(const T*, const T*, const T*, const T*, int, int, int, T*, T*, T*);
BN(float)
BN(double)
#endif
