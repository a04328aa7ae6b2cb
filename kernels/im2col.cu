// im2col and col2im for NCHW batches; T is float or double.
//
// im2col: one thread per element of col (N*OH*OW rows, C*KH*KW columns), row-major.
//   i = row * CKK + k,  row = (n*OH + oh)*OW + ow,  k = (c*KH + kh)*KW + kw
//   ih = oh*SH - PH + kh*DH,  iw = ow*SW - PW + kw*DW;  col[i] = x[n, c, ih, iw] or 0 in the padding.
// col2im (adjoint, a gather): one thread per element of dx (N, C, H, W); it sums every
//   (oh, kh) with oh*SH - PH + kh*DH = ih (and likewise for columns), so no atomics and a fixed
//   summation order: results are bit-for-bit repeatable.
// rows_to_nchw: the convolution's epilogue. The GEMM gives rows (N*L, OC), L = OH*OW; one thread
//   per element of y (N, OC, L) reads rows[n*L + l, oc] and adds bias[oc] (bias may be null).

template <typename T>
__global__ void im2col(const T* __restrict__ x, T* __restrict__ col, long long total,
                       int C, int H, int W, int KH, int KW, int SH, int SW, int PH, int PW, int OH, int OW,
                       int DH, int DW) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    int CKK = C * KH * KW;
    long long row = i / CKK;
    int k = (int)(i % CKK);
    int kw = k % KW, kh = (k / KW) % KH, c = k / (KW * KH);
    int ow = (int)(row % OW), oh = (int)((row / OW) % OH);
    long long n = row / ((long long)OW * OH);
    int ih = oh * SH - PH + kh * DH, iw = ow * SW - PW + kw * DW;
    col[i] = (ih >= 0 && ih < H && iw >= 0 && iw < W) ? x[((n * C + c) * H + ih) * W + iw] : T(0);
}

template <typename T>
__global__ void col2im(const T* __restrict__ col, T* __restrict__ dx, long long total,
                       int C, int H, int W, int KH, int KW, int SH, int SW, int PH, int PW, int OH, int OW,
                       int DH, int DW) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    int iw = (int)(i % W), ih = (int)((i / W) % H), c = (int)((i / ((long long)W * H)) % C);
    long long n = i / ((long long)W * H * C);
    int CKK = C * KH * KW;
    T sum = T(0);
    for (int kh = 0; kh < KH; ++kh) {
        int t = ih + PH - kh * DH;
        if (t < 0 || t % SH != 0 || t / SH >= OH) continue;
        int oh = t / SH;
        for (int kw = 0; kw < KW; ++kw) {
            int u = iw + PW - kw * DW;
            if (u < 0 || u % SW != 0 || u / SW >= OW) continue;
            int ow = u / SW;
            long long row = (n * OH + oh) * OW + ow;
            sum += col[row * CKK + (c * KH + kh) * KW + kw];
        }
    }
    dx[i] = sum;
}

template <typename T>
__global__ void rows_to_nchw(const T* __restrict__ rows, const T* __restrict__ bias, T* __restrict__ y,
                             long long total, int OC, int L) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    int l = (int)(i % L), oc = (int)((i / L) % OC);
    long long n = i / ((long long)L * OC);
    T v = rows[(n * L + l) * OC + oc];
    y[i] = bias != nullptr ? v + bias[oc] : v;
}

#ifdef MINICNN_INSTANTIATE
template __global__ void im2col<float>(const float*, float*, long long, int, int, int, int, int, int, int, int, int, int, int, int, int);
template __global__ void im2col<double>(const double*, double*, long long, int, int, int, int, int, int, int, int, int, int, int, int, int);
template __global__ void col2im<float>(const float*, float*, long long, int, int, int, int, int, int, int, int, int, int, int, int, int);
template __global__ void col2im<double>(const double*, double*, long long, int, int, int, int, int, int, int, int, int, int, int, int, int);
template __global__ void rows_to_nchw<float>(const float*, const float*, float*, long long, int, int);
template __global__ void rows_to_nchw<double>(const double*, const double*, double*, long long, int, int);
#endif
