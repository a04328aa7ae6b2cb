// Fused optimizer updates, one thread per parameter element; T is float or double.
// The arithmetic follows torch.optim's order of operations (see minicnn/optim/*.py).
//
// sgd: g = grad + wd*p; buf = first ? g : momentum*buf + (1-dampening)*g;
//      g = nesterov ? g + momentum*buf : buf  (or g itself without momentum); p -= lr*g
// adam: g = grad + wd*p (L2) or p *= 1 - lr*wd (decoupled); m += (1-b1)*(g - m);
//      v = b2*v + (1-b2)*g*g; p -= step_size * m / (sqrt(v)/bc2_sqrt + eps)

template <typename T>
__global__ void sgd_step(T* __restrict__ p, const T* __restrict__ grad, T* __restrict__ buf, long long total,
                         T lr, T momentum, T dampening, T weight_decay, int nesterov, int first) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    T g = grad[i];
    if (weight_decay != T(0)) g = g + weight_decay * p[i];
    if (momentum != T(0)) {
        T b = first ? g : momentum * buf[i] + (T(1) - dampening) * g;
        buf[i] = b;
        g = nesterov ? g + momentum * b : b;
    }
    p[i] -= lr * g;
}

template <typename T>
__global__ void adam_step(T* __restrict__ p, const T* __restrict__ grad, T* __restrict__ m, T* __restrict__ v,
                          long long total, T lr, T beta1, T beta2, T eps, T weight_decay, int decoupled,
                          T step_size, T bc2_sqrt) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    T g = grad[i];
    if (weight_decay != T(0)) {
        if (decoupled) p[i] *= T(1) - lr * weight_decay;
        else g = g + weight_decay * p[i];
    }
    T mi = m[i] + (T(1) - beta1) * (g - m[i]);
    T vi = beta2 * v[i] + (T(1) - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    p[i] -= step_size * (mi / (sqrt(vi) / bc2_sqrt + eps));
}

#ifdef MINICNN_INSTANTIATE
#define OPT(T) \
template __global__ void sgd_step<T>(T*, const T*, T*, long long, T, T, T, T, int, int); \
template __global__ void adam_step<T>(T*, const T*, T*, T*, long long, T, T, T, T, T, int, T, T);
OPT(float)
OPT(double)
#endif
