// Softmax cross-entropy on logits (N, K) with integer labels (N,); T is float or double.
//
// Forward: one thread per row n. m = max_k logits, lse = log(sum exp(logit - m)),
//   logp_k = logit_k - m - lse, probs = exp(logp), loss = -(1-e)*logp[label] - e*mean(logp),
//   so logits of 1e4 neither overflow nor produce NaN. A label outside [0, K) sets *bad = 1 and
//   gives that row a NaN loss and NaN probabilities (nothing is read out of bounds); the host
//   turns the flag into an error message.
// Backward: one thread per element (n, k): dlogits = scale_n * (probs - (1-e)*[k == label] - e/K),
//   scale_n = scale[n * scale_stride] (stride 0: one scale for every row).

template <typename T>
__global__ void softmax_ce_forward(const T* __restrict__ logits, const long long* __restrict__ labels, T smoothing,
                                   int N, int K, T* __restrict__ loss, T* __restrict__ probs, int* __restrict__ bad) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const T* row = logits + (long long)n * K;
    long long label = labels[n];
    if (label < 0 || label >= K) {
        *bad = 1;
        T nan = T(0) / T(0);
        for (int k = 0; k < K; ++k) probs[(long long)n * K + k] = nan;
        loss[n] = nan;
        return;
    }
    T m = row[0];
    for (int k = 1; k < K; ++k) m = row[k] > m ? row[k] : m;
    T total = T(0);
    for (int k = 0; k < K; ++k) total += exp(row[k] - m);
    T lse = log(total), mean_logp = T(0);
    for (int k = 0; k < K; ++k) {
        T logp = row[k] - m - lse;
        probs[(long long)n * K + k] = exp(logp);
        mean_logp += logp;
    }
    T nll = -(row[label] - m - lse);
    loss[n] = (T(1) - smoothing) * nll - smoothing * mean_logp / T(K);
}

template <typename T>
__global__ void softmax_ce_backward(const T* __restrict__ probs, const long long* __restrict__ labels, T smoothing,
                                    const T* __restrict__ scale, int scale_stride, int N, int K, T* __restrict__ dlogits) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * K) return;
    int n = (int)(i / K), k = (int)(i % K);
    T target = smoothing / T(K) + (k == labels[n] ? T(1) - smoothing : T(0));   // probs are NaN for bad labels
    dlogits[i] = scale[(long long)n * scale_stride] * (probs[i] - target);
}

#ifdef MINICNN_INSTANTIATE
#define CE(T) \
template __global__ void softmax_ce_forward<T>(const T*, const long long*, T, int, int, T*, T*, int*); \
template __global__ void softmax_ce_backward<T>(const T*, const long long*, T, const T*, int, int, int, T*);
CE(float)
CE(double)
#endif
