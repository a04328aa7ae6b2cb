// Max and average pooling, forward and backward, NCHW; T is float or double.
//
// Forward: one thread per output (n, c, oh, ow); its window covers rows oh*SH - PH + kh and
//   columns ow*SW - PW + kw. Max pooling skips padded taps (padding is -inf), keeps the first
//   maximum, or the last NaN (torch's rule), and records idx = kh*KW + kw. Average pooling divides by
//   KH*KW, or by the number of taps inside the image when count_include_pad is 0.
// Backward: one thread per input pixel (n, c, ih, iw) gathers from every window containing it:
//   max pooling takes dy where idx names this pixel, average pooling dy / divisor. No atomics.

template <typename T>
__global__ void maxpool_forward(const T* __restrict__ x, T* __restrict__ y, long long* __restrict__ idx,
                                long long total, int C, int H, int W, int KH, int KW, int SH, int SW,
                                int PH, int PW, int OH, int OW) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    int ow = (int)(i % OW), oh = (int)((i / OW) % OH);
    long long nc = i / ((long long)OW * OH);
    const T* plane = x + nc * H * W;
    int h0 = oh * SH - PH, w0 = ow * SW - PW;
    int best_k = -1;
    T best = T(0);
    for (int kh = 0; kh < KH; ++kh) {
        int ih = h0 + kh;
        if (ih < 0 || ih >= H) continue;
        for (int kw = 0; kw < KW; ++kw) {
            int iw = w0 + kw;
            if (iw < 0 || iw >= W) continue;
            T v = plane[ih * W + iw];
            if (best_k < 0 || v > best || v != v) { best = v; best_k = kh * KW + kw; }
        }
    }
    y[i] = best;
    idx[i] = best_k;
}

template <typename T>
__global__ void maxpool_backward(const T* __restrict__ dy, const long long* __restrict__ idx, T* __restrict__ dx,
                                 long long total, int C, int H, int W, int KH, int KW, int SH, int SW,
                                 int PH, int PW, int OH, int OW) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    int iw = (int)(i % W), ih = (int)((i / W) % H);
    long long nc = i / ((long long)W * H);
    T sum = T(0);
    for (int kh = 0; kh < KH; ++kh) {
        int t = ih + PH - kh;
        if (t < 0 || t % SH != 0 || t / SH >= OH) continue;
        for (int kw = 0; kw < KW; ++kw) {
            int u = iw + PW - kw;
            if (u < 0 || u % SW != 0 || u / SW >= OW) continue;
            long long o = (nc * OH + t / SH) * OW + u / SW;
            if (idx[o] == kh * KW + kw) sum += dy[o];
        }
    }
    dx[i] = sum;
}

template <typename T>
__global__ void avgpool_forward(const T* __restrict__ x, T* __restrict__ y, long long total, int C, int H, int W,
                                int KH, int KW, int SH, int SW, int PH, int PW, int OH, int OW, int count_include_pad) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    int ow = (int)(i % OW), oh = (int)((i / OW) % OH);
    long long nc = i / ((long long)OW * OH);
    const T* plane = x + nc * H * W;
    T sum = T(0);
    int inside = 0;
    for (int kh = 0; kh < KH; ++kh) {
        int ih = oh * SH - PH + kh;
        if (ih < 0 || ih >= H) continue;
        for (int kw = 0; kw < KW; ++kw) {
            int iw = ow * SW - PW + kw;
            if (iw < 0 || iw >= W) continue;
            sum += plane[ih * W + iw];
            ++inside;
        }
    }
    y[i] = sum / T(count_include_pad ? KH * KW : inside);
}

template <typename T>
__global__ void avgpool_backward(const T* __restrict__ dy, T* __restrict__ dx, long long total, int C, int H, int W,
                                 int KH, int KW, int SH, int SW, int PH, int PW, int OH, int OW, int count_include_pad) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    int iw = (int)(i % W), ih = (int)((i / W) % H);
    long long nc = i / ((long long)W * H);
    T sum = T(0);
    for (int kh = 0; kh < KH; ++kh) {
        int t = ih + PH - kh;
        if (t < 0 || t % SH != 0 || t / SH >= OH) continue;
        int oh = t / SH;
        for (int kw = 0; kw < KW; ++kw) {
            int u = iw + PW - kw;
            if (u < 0 || u % SW != 0 || u / SW >= OW) continue;
            int ow = u / SW;
            int divisor = KH * KW;
            if (!count_include_pad) {     // taps of window (oh, ow) that fall inside the image
                int rows = min(oh * SH - PH + KH, H) - max(oh * SH - PH, 0);
                int cols = min(ow * SW - PW + KW, W) - max(ow * SW - PW, 0);
                divisor = rows * cols;
            }
            sum += dy[(nc * OH + oh) * OW + ow] / T(divisor);
        }
    }
    dx[i] = sum;
}

#ifdef MINICNN_INSTANTIATE
#define POOL(T) \
template __global__ void maxpool_forward<T>(const T*, T*, long long*, long long, int, int, int, int, int, int, int, int, int, int, int); \
template __global__ void maxpool_backward<T>(const T*, const long long*, T*, long long, int, int, int, int, int, int, int, int, int, int, int); \
template __global__ void avgpool_forward<T>(const T*, T*, long long, int, int, int, int, int, int, int, int, int, int, int, int); \
template __global__ void avgpool_backward<T>(const T*, T*, long long, int, int, int, int, int, int, int, int, int, int, int, int);
POOL(float)
POOL(double)
#endif
