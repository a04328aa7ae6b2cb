// Matrix product C[b] = A[b] @ B[b], b < gridDim.z, for CUDA graphs: cuBLAS cannot be called
// while CuPy captures a stream, so a captured training step multiplies with this kernel; T is
// float or double.
//
// A (M, K) and B (K, N) are read through element strides, so transposed views need no copy:
// A(m, k) = A[b*a_b + m*a_m + k*a_k], B(k, n) = B[b*b_b + k*b_k + n*b_n]; a batch stride of 0
// broadcasts one matrix over the batch. C is contiguous, (batch, M, N).
// Tiling: a block of 256 threads computes a 64x64 tile of C, walking K in steps of 16 through
// shared memory; thread (tx, ty) = (t % 16, t / 16) owns C rows ty + 16i and columns tx + 16j,
// i, j < 4 (writes are coalesced along tx). Each C element sums its K products in order of k,
// so results are repeatable.

#define GEMM_TM 64
#define GEMM_TN 64
#define GEMM_TK 16

template <typename T>
__global__ void gemm(const T* __restrict__ A, const T* __restrict__ B, T* __restrict__ C, int M, int N, int K,
                     long long a_b, long long a_m, long long a_k, long long b_b, long long b_k, long long b_n) {
    __shared__ T As[GEMM_TK][GEMM_TM];
    __shared__ T Bs[GEMM_TK][GEMM_TN];
    int t = threadIdx.x, tx = t % 16, ty = t / 16;
    int m0 = blockIdx.y * GEMM_TM, n0 = blockIdx.x * GEMM_TN;
    A += blockIdx.z * a_b;
    B += blockIdx.z * b_b;
    C += (long long)blockIdx.z * M * N;
    T acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = T(0);
    for (int k0 = 0; k0 < K; k0 += GEMM_TK) {
        for (int e = t; e < GEMM_TM * GEMM_TK; e += 256) {
            int mm = e % GEMM_TM, kk = e / GEMM_TM, m = m0 + mm, k = k0 + kk;
            As[kk][mm] = (m < M && k < K) ? A[m * a_m + k * a_k] : T(0);
        }
        for (int e = t; e < GEMM_TK * GEMM_TN; e += 256) {
            int nn = e % GEMM_TN, kk = e / GEMM_TN, n = n0 + nn, k = k0 + kk;
            Bs[kk][nn] = (k < K && n < N) ? B[k * b_k + n * b_n] : T(0);
        }
        __syncthreads();
        for (int kk = 0; kk < GEMM_TK; ++kk) {
            T a[4], b[4];
            for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
            for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx + 16 * j];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; ++i) {
        int m = m0 + ty + 16 * i;
        if (m >= M) continue;
        for (int j = 0; j < 4; ++j) {
            int n = n0 + tx + 16 * j;
            if (n < N) C[(long long)m * N + n] = acc[i][j];
        }
    }
}

#ifdef MINICNN_INSTANTIATE
template __global__ void gemm<float>(const float*, const float*, float*, int, int, int, long long, long long, long long, long long, long long, long long);
template __global__ void gemm<double>(const double*, const double*, double*, int, int, int, long long, long long, long long, long long, long long, long long);
#endif
