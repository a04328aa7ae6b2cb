// Fused optimizer updates of a whole parameter group, one thread per element; T is float or double.
// The arithmetic follows torch.optim's order of operations (see minicnn/optim/*.py).
//
// sgd: g = grad + wd*p; buf = first ? g : momentum*buf + (1-dampening)*g;
//      g = nesterov ? g + momentum*buf : buf  (or g itself without momentum); p -= lr*g
// adam: g = grad + wd*p (L2) or p *= 1 - lr*wd (decoupled); m += (1-b1)*(g - m);
//      v = b2*v + (1-b2)*g*g; p -= step_size * m / (sqrt(v)/bc2_sqrt + eps)
//
// One launch updates every parameter of a group. Tensor j owns elements
// offsets[j] .. offsets[j+1]-1 of a virtual concatenation (offsets[n] = total); thread i finds its
// tensor by binary search and updates element i - offsets[j] of it through the pointer tables
// (one device pointer per tensor). The hyper-parameters are read from device memory, hyper =
// {lr, momentum, dampening, weight_decay} (sgd) or {lr, beta1, beta2, eps, weight_decay, step_size,
// bc2_sqrt} (adam), so a captured CUDA graph sees the values of every step (the host rewrites them
// before each launch).

__device__ __forceinline__ int owner(const long long* __restrict__ offsets, int n, long long i) {
    int lo = 0, hi = n;                       // invariant: offsets[lo] <= i < offsets[hi]
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (offsets[mid] <= i) lo = mid; else hi = mid;
    }
    return lo;
}

template <typename T>
__global__ void sgd_multi(T* const* p, T* const* grad, T* const* buf, const long long* __restrict__ offsets, int n,
                          const T* __restrict__ hyper, int nesterov, int first) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= offsets[n]) return;
    int j = owner(offsets, n, i);
    long long k = i - offsets[j];
    T lr = hyper[0], momentum = hyper[1], dampening = hyper[2], weight_decay = hyper[3];
    T* pj = p[j];
    T g = grad[j][k];
    if (weight_decay != T(0)) g = g + weight_decay * pj[k];
    if (momentum != T(0)) {
        T b = first ? g : momentum * buf[j][k] + (T(1) - dampening) * g;
        buf[j][k] = b;
        g = nesterov ? g + momentum * b : b;
    }
    pj[k] -= lr * g;
}

template <typename T>
__global__ void adam_multi(T* const* p, T* const* grad, T* const* m, T* const* v, T* const* vmax,
                           const long long* __restrict__ offsets, int n, const T* __restrict__ hyper,
                           int decoupled, int amsgrad) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= offsets[n]) return;
    int j = owner(offsets, n, i);
    long long k = i - offsets[j];
    T lr = hyper[0], beta1 = hyper[1], beta2 = hyper[2], eps = hyper[3], weight_decay = hyper[4];
    T step_size = hyper[5], bc2_sqrt = hyper[6];
    T* pj = p[j];
    T g = grad[j][k];
    if (weight_decay != T(0)) {
        if (decoupled) pj[k] *= T(1) - lr * weight_decay;
        else g = g + weight_decay * pj[k];
    }
    T mi = m[j][k] + (T(1) - beta1) * (g - m[j][k]);
    T vi = beta2 * v[j][k] + (T(1) - beta2) * g * g;
    m[j][k] = mi;
    v[j][k] = vi;
    if (amsgrad) {                            // running maximum; NaN propagates as in torch.maximum
        T old = vmax[j][k];
        vi = (old != old || old > vi) ? old : vi;
        vmax[j][k] = vi;
    }
    pj[k] -= step_size * (mi / (sqrt(vi) / bc2_sqrt + eps));
}

#ifdef MINICNN_INSTANTIATE
#define OPT(T) \
template __global__ void sgd_multi<T>(T* const*, T* const*, T* const*, const long long*, int, const T*, int, int); \
template __global__ void adam_multi<T>(T* const*, T* const*, T* const*, T* const*, T* const*, const long long*, int, const T*, int, int);
OPT(float)
OPT(double)
#endif
