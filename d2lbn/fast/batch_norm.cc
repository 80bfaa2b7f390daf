// d2lbn's batch norm as an MXNet operator, through MXNet's extension-library API.
//
// Inputs:  X (N, C, ...), gamma, beta (C values each), mode, moving_mean, moving_var
//          (C values each, updated in place). The API does not tell an operator whether
//          it is training: mode is Dropout(p=0.5) of a 1, which is 1 only in prediction.
// Outputs: Y, and per channel the shift and 1/sqrt(var + eps) that backward reuses.
// Attributes: eps, momentum (Gluon's: moving = momentum * moving + (1 - momentum) * batch).
// X is viewed as (N, C, S), S the product of the axes after the channel axis.
//
// The mean is kept in two parts, K + shift, K a value of X (the channel's first in
// training, 0 in prediction): X - K is exact in float32 where X - mean would carry
// the rounding of a large mean (1000: 3e-5) into every output.
#include <algorithm>
#include <cmath>
#include <string>
#include "lib_api.h"

using namespace mxnet::ext;

// Each loop is compiled for several instruction sets; the loader picks the best
// the CPU has (no -march=native: that library would crash on an older CPU)
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KERNEL __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define KERNEL
#endif

struct Dims { int64_t N, C, S; };

static Dims dims_of(const MXTensor& X) {
  Dims d{X.shape[0], X.shape[1], 1};
  for (size_t i = 2; i < X.shape.size(); ++i) d.S *= X.shape[i];
  return d;
}

template <typename T>
std::vector<T> centres(const T* X, Dims d, bool training) {
  std::vector<T> K(d.C, T(0));
  for (int64_t c = 0; training && c < d.C; ++c) K[c] = X[c * d.S];
  return K;
}

// f(i, c) on every element, i its flat index, c its channel. The inner loop is
// vectorised: over the positions, or over the channels when there are none (2-D)
template <typename F> inline __attribute__((always_inline)) void each(Dims d, F f) {
  for (int64_t n = 0; n < d.N; ++n) {
    if (d.S == 1) {
#pragma omp simd
      for (int64_t c = 0; c < d.C; ++c) f(n * d.C + c, c);
      continue;
    }
    for (int64_t c = 0; c < d.C; ++c) {
      const int64_t o = (n * d.C + c) * d.S;
#pragma omp simd
      for (int64_t s = 0; s < d.S; ++s) f(o + s, c);
    }
  }
}

// Per channel, the sums of u(i, c) and v(i, c) over every element, in double
template <typename U, typename V>
inline __attribute__((always_inline)) void sums(Dims d, double* su, double* sv, U u, V v) {
  std::fill(su, su + d.C, 0.0);
  std::fill(sv, sv + d.C, 0.0);
  for (int64_t n = 0; n < d.N; ++n) {
    if (d.S == 1) {
#pragma omp simd
      for (int64_t c = 0; c < d.C; ++c) { su[c] += u(n * d.C + c, c); sv[c] += v(n * d.C + c, c); }
      continue;
    }
    for (int64_t c = 0; c < d.C; ++c) {
      const int64_t o = (n * d.C + c) * d.S;
      double a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
      for (int64_t s = 0; s < d.S; ++s) { a += u(o + s, c); b += v(o + s, c); }
      su[c] += a;
      sv[c] += b;
    }
  }
}

// The four passes over memory. Training, pass 1: the sums of x - K and (x - K)^2
template <typename T> KERNEL
void moments(const T* X, Dims d, const T* K, double* sum, double* sum_sq) {
  sums(d, sum, sum_sq, [=](int64_t i, int64_t c) { return double(X[i] - K[c]); },
       [=](int64_t i, int64_t c) { double v = X[i] - K[c]; return v * v; });
}

// Pass 2: Y = a * (X - K - shift) + beta per channel, a = gamma / std
template <typename T> KERNEL
void normalize(const T* X, Dims d, const T* a, const T* K, const T* shift, const T* beta,
               T* Y) {
  each(d, [=](int64_t i, int64_t c) { Y[i] = a[c] * ((X[i] - K[c]) - shift[c]) + beta[c]; });
}

// Backward, pass 1: the sums of dY and dY * (x - mean)
template <typename T> KERNEL
void grad_sums(const T* dY, const T* X, Dims d, const T* K, const T* shift, double* sum_dy,
               double* sum_dy_xc) {
  sums(d, sum_dy, sum_dy_xc, [=](int64_t i, int64_t) { return double(dY[i]); },
       [=](int64_t i, int64_t c) { return dY[i] * (double(X[i] - K[c]) - shift[c]); });
}

// Backward, pass 2: dX = p * dY + q * (X - mean) + r per channel (q = r = 0 in
// prediction, where the statistics are constants)
template <typename T> KERNEL
void grad_x(const T* dY, const T* X, Dims d, const T* K, const T* shift, const T* p,
            const T* q, const T* r, T* dX) {
  each(d, [=](int64_t i, int64_t c) {
    dX[i] = p[c] * dY[i] + q[c] * ((X[i] - K[c]) - shift[c]) + r[c];
  });
}

static bool training(MXTensor& mode) {
  return mode.dtype == kFloat32 ? mode.data<float>()[0] != 1 : mode.data<double>()[0] != 1;
}

template <typename T>
void forward_t(const std::unordered_map<std::string, std::string>& attrs,
               std::vector<MXTensor>& in, std::vector<MXTensor>& out) {
  const T* X = in[0].data<T>();
  const Dims d = dims_of(in[0]);
  const double eps = std::stod(attrs.at("eps")), momentum = std::stod(attrs.at("momentum"));
  T *shift = out[1].data<T>(), *inv_std = out[2].data<T>();
  T *moving_mean = in[4].data<T>(), *moving_var = in[5].data<T>();
  const bool train = training(in[3]);
  const std::vector<T> K = centres(X, d, train);
  if (train) {
    std::vector<double> sum(d.C), sum_sq(d.C);
    moments(X, d, K.data(), sum.data(), sum_sq.data());
    const double m = double(d.N) * d.S;
    for (int64_t c = 0; c < d.C; ++c) {
      const double h = sum[c] / m, var = sum_sq[c] / m - h * h;  // biased variance
      shift[c] = T(h);
      inv_std[c] = T(1 / std::sqrt(var + eps));
      moving_mean[c] = T(momentum * moving_mean[c] + (1 - momentum) * (K[c] + h));
      moving_var[c] = T(momentum * moving_var[c] + (1 - momentum) * var);
    }
  } else {
    for (int64_t c = 0; c < d.C; ++c) {
      shift[c] = moving_mean[c];
      inv_std[c] = T(1 / std::sqrt(double(moving_var[c]) + eps));
    }
  }
  std::vector<T> a(d.C);
  for (int64_t c = 0; c < d.C; ++c) a[c] = in[1].data<T>()[c] * inv_std[c];
  normalize(X, d, a.data(), K.data(), shift, in[2].data<T>(), out[0].data<T>());
}

// in: dY, dShift, dInvStd, then the forward's inputs and outputs; out: the inputs' gradients
template <typename T>
void backward_t(std::vector<MXTensor>& in, std::vector<MXTensor>& out) {
  const T *dY = in[0].data<T>(), *X = in[3].data<T>(), *gamma = in[4].data<T>();
  const T *shift = in[10].data<T>(), *inv_std = in[11].data<T>();
  const Dims d = dims_of(in[3]);
  const double m = double(d.N) * d.S;
  const bool train = training(in[6]);
  const std::vector<T> K = centres(X, d, train);
  std::vector<double> sum_dy(d.C), sum_dy_xc(d.C);
  std::vector<T> p(d.C), q(d.C), r(d.C);
  grad_sums(dY, X, d, K.data(), shift, sum_dy.data(), sum_dy_xc.data());
  for (int64_t c = 0; c < d.C; ++c) {
    const double k = double(gamma[c]) * inv_std[c];
    p[c] = T(k);
    q[c] = T(train ? -k * inv_std[c] * inv_std[c] * sum_dy_xc[c] / m : 0);
    r[c] = T(train ? -k * sum_dy[c] / m : 0);
    out[1].data<T>()[c] = T(sum_dy_xc[c] * inv_std[c]);  // dgamma
    out[2].data<T>()[c] = T(sum_dy[c]);                   // dbeta
  }
  grad_x(dY, X, d, K.data(), shift, p.data(), q.data(), r.data(), out[0].data<T>());
  out[3].data<T>()[0] = 0;  // the mode has no gradient
}

MXReturnValue forward(const std::unordered_map<std::string, std::string>& attrs,
                      std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                      const OpResource&) {
  switch ((*in)[0].dtype) {
    case kFloat32: forward_t<float>(attrs, *in, *out); return MX_SUCCESS;
    case kFloat64: forward_t<double>(attrs, *in, *out); return MX_SUCCESS;
    default: MX_ERROR_MSG << "d2lbn_batch_norm computes in float32 or float64"; return MX_FAIL;
  }
}

MXReturnValue backward(const std::unordered_map<std::string, std::string>&,
                       std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                       const OpResource&) {
  switch ((*in)[0].dtype) {
    case kFloat32: backward_t<float>(*in, *out); return MX_SUCCESS;
    case kFloat64: backward_t<double>(*in, *out); return MX_SUCCESS;
    default: MX_ERROR_MSG << "d2lbn_batch_norm computes in float32 or float64"; return MX_FAIL;
  }
}

MXReturnValue parse_attrs(const std::unordered_map<std::string, std::string>&, int* num_in,
                          int* num_out) {
  *num_in = 6;
  *num_out = 3;
  return MX_SUCCESS;
}

// The Python side checks every input first: a failed inference here ends the process.
// So these never fail; they state what each input must be, and MXNet's own checks
// raise an ordinary error on a mismatch. (An unknown dimension arrives as 2^32 - 1)
MXReturnValue infer_type(const std::unordered_map<std::string, std::string>&,
                         std::vector<int>* in, std::vector<int>* out) {
  for (int& t : *in) t = (*in)[0];
  for (int& t : *out) t = (*in)[0];
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const std::unordered_map<std::string, std::string>&,
                          std::vector<std::vector<unsigned>>* in,
                          std::vector<std::vector<unsigned>>* out) {
  const std::vector<unsigned> X = (*in)[0];
  if (X.size() < 2) return MX_SUCCESS;  // X's shape is not known yet
  std::vector<unsigned> per_channel(X.size(), 1);  // (1, C, 1, ...), the Block's
  per_channel[1] = X[1];
  for (int i : {1, 2, 4, 5}) (*in)[i] = per_channel;
  (*in)[3] = {1};
  (*out)[0] = X;
  (*out)[1] = (*out)[2] = {X[1]};
  return MX_SUCCESS;
}

MXReturnValue mutate_inputs(const std::unordered_map<std::string, std::string>&,
                            std::vector<int>* indices) {
  *indices = {4, 5};  // moving_mean, moving_var
  return MX_SUCCESS;
}

REGISTER_OP(d2lbn_batch_norm)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setMutateInputs(mutate_inputs)
    .setForward(forward, "cpu")
    .setBackward(backward, "cpu");

MXReturnValue initialize(int version) {
  return version >= 10900 ? MX_SUCCESS : MX_FAIL;
}
