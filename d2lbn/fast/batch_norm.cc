// d2lbn's batch norm as an MXNet operator, through MXNet's extension-library API.
//
// Inputs:  X (N, C, ...), gamma, beta (C values each), mode, moving_mean, moving_var
//          (C values each, updated in place). The API does not tell an operator whether
//          it is training: mode is Dropout(p=0.5) of a 1, which is 1 only in prediction.
// Output:  Y only: backward re-derives the batch statistics from X, in the pass that
//          it makes over X anyway, so the forward keeps nothing else.
// Attributes: eps, momentum (Gluon's: moving = momentum * moving + (1 - momentum) * batch).
// X is viewed as (N, C, S), S the product of the axes after the channel axis.
//
// The mean is kept in two parts, K + shift, K a value of X (the channel's first in
// training, 0 in prediction): X - K is exact in float32 where X - mean would carry
// the rounding of a large mean (1000: 3e-5) into every output.
#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
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

struct None {};  // no third and fourth sum

// Per channel, the sums of u(i, c) and v(i, c) over every element, and of w and z
// when given (four sums from one pass over memory), in double
template <typename U, typename V, typename W = None, typename Z = None>
inline __attribute__((always_inline)) void sums(Dims d, double* su, double* sv, U u, V v,
                                                double* sw = nullptr, double* sz = nullptr,
                                                W w = {}, Z z = {}) {
  constexpr bool four = !std::is_same_v<W, None>;
  std::fill(su, su + d.C, 0.0);
  std::fill(sv, sv + d.C, 0.0);
  if constexpr (four) {
    std::fill(sw, sw + d.C, 0.0);
    std::fill(sz, sz + d.C, 0.0);
  }
  if (d.S == 1) {  // (N, C): per block of channels, the sums stay in registers down the rows
    constexpr int64_t B = 16;
    int64_t c0 = 0;
    for (; c0 + B <= d.C; c0 += B) {
      double a[B] = {}, b[B] = {}, e[B] = {}, g[B] = {};
      for (int64_t n = 0; n < d.N; ++n) {
#pragma omp simd
        for (int64_t j = 0; j < B; ++j) {
          const int64_t i = n * d.C + c0 + j, c = c0 + j;
          a[j] += u(i, c);
          b[j] += v(i, c);
          if constexpr (four) {
            e[j] += w(i, c);
            g[j] += z(i, c);
          }
        }
      }
      for (int64_t j = 0; j < B; ++j) {
        su[c0 + j] = a[j];
        sv[c0 + j] = b[j];
        if constexpr (four) {
          sw[c0 + j] = e[j];
          sz[c0 + j] = g[j];
        }
      }
    }
    for (int64_t n = 0; n < d.N; ++n) {  // the channels left over
      for (int64_t c = c0; c < d.C; ++c) {
        const int64_t i = n * d.C + c;
        su[c] += u(i, c);
        sv[c] += v(i, c);
        if constexpr (four) {
          sw[c] += w(i, c);
          sz[c] += z(i, c);
        }
      }
    }
    return;
  }
  for (int64_t n = 0; n < d.N; ++n) {
    for (int64_t c = 0; c < d.C; ++c) {
      const int64_t o = (n * d.C + c) * d.S;
      double a = 0, b = 0, e = 0, g = 0;
#pragma omp simd reduction(+ : a, b, e, g)
      for (int64_t s = 0; s < d.S; ++s) {
        a += u(o + s, c);
        b += v(o + s, c);
        if constexpr (four) {
          e += w(o + s, c);
          g += z(o + s, c);
        }
      }
      su[c] += a;
      sv[c] += b;
      if constexpr (four) {
        sw[c] += e;
        sz[c] += g;
      }
    }
  }
}

// The four passes over memory. Training, pass 1: the sums of x - K and (x - K)^2
template <typename T> struct Centred {
  const T *X, *K;
  double operator()(int64_t i, int64_t c) const { return double(X[i] - K[c]); }
};
template <typename T> struct Squared {
  const T *X, *K;
  double operator()(int64_t i, int64_t c) const { double v = X[i] - K[c]; return v * v; }
};

template <typename T> KERNEL
void moments(const T* X, Dims d, const T* K, double* sum, double* sum_sq) {
  sums(d, sum, sum_sq, Centred<T>{X, K}, Squared<T>{X, K});
}

// Pass 2: Y = a * (X - K - shift) + beta per channel, a = gamma / std
template <typename T> KERNEL
void normalize(const T* X, Dims d, const T* a, const T* K, const T* shift, const T* beta,
               T* Y) {
  each(d, [=](int64_t i, int64_t c) { Y[i] = a[c] * ((X[i] - K[c]) - shift[c]) + beta[c]; });
}

// Backward, pass 1, over X and dY at once: the forward's two sums (the same
// terms in the same order, so the same statistics) and those of dY and dY * (x - K)
template <typename T> KERNEL
void grad_sums(const T* dY, const T* X, Dims d, const T* K, double* sum, double* sum_sq,
               double* sum_dy, double* sum_dy_xk) {
  sums(d, sum, sum_sq, Centred<T>{X, K}, Squared<T>{X, K}, sum_dy, sum_dy_xk,
       [=](int64_t i, int64_t) { return double(dY[i]); },
       [=](int64_t i, int64_t c) { return dY[i] * double(X[i] - K[c]); });
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

// Per channel, the shift (mean - K) and 1/sqrt(var + eps) that normalise X: from the
// sums in training, from the moving statistics in prediction. Forward and backward
// both call it, on the same sums, so they use the same values
template <typename T> struct Stats {
  std::vector<T> shift, inv_std;
  std::vector<double> h, var;  // the shift unrounded, and the variance
};

template <typename T>
Stats<T> stats(Dims d, bool train, const double* sum, const double* sum_sq,
               const T* moving_mean, const T* moving_var, double eps) {
  Stats<T> s{std::vector<T>(d.C), std::vector<T>(d.C), std::vector<double>(d.C),
             std::vector<double>(d.C)};
  const double m = double(d.N) * d.S;
  for (int64_t c = 0; c < d.C; ++c) {
    const double h = s.h[c] = train ? sum[c] / m : moving_mean[c];
    s.var[c] = train ? sum_sq[c] / m - h * h : moving_var[c];  // biased in training
    s.shift[c] = T(h);
    s.inv_std[c] = T(1 / std::sqrt(s.var[c] + eps));
  }
  return s;
}

template <typename T>
void forward_t(const std::unordered_map<std::string, std::string>& attrs,
               std::vector<MXTensor>& in, std::vector<MXTensor>& out) {
  const T *X = in[0].data<T>(), *gamma = in[1].data<T>(), *beta = in[2].data<T>();
  T *moving_mean = in[4].data<T>(), *moving_var = in[5].data<T>();
  const Dims d = dims_of(in[0]);
  const double eps = std::stod(attrs.at("eps")), momentum = std::stod(attrs.at("momentum"));
  const bool train = training(in[3]);
  const std::vector<T> K = centres(X, d, train);
  std::vector<double> sum(d.C), sum_sq(d.C);
  if (train) moments(X, d, K.data(), sum.data(), sum_sq.data());
  const Stats<T> s = stats(d, train, sum.data(), sum_sq.data(), moving_mean, moving_var, eps);
  std::vector<T> a(d.C);
  for (int64_t c = 0; c < d.C; ++c) {
    a[c] = gamma[c] * s.inv_std[c];
    if (train) {
      moving_mean[c] = T(momentum * moving_mean[c] + (1 - momentum) * (K[c] + s.h[c]));
      moving_var[c] = T(momentum * moving_var[c] + (1 - momentum) * s.var[c]);
    }
  }
  normalize(X, d, a.data(), K.data(), s.shift.data(), beta, out[0].data<T>());
}

// in: dY, then the forward's inputs (X, gamma, beta, mode, moving_mean, moving_var) and
// output; out: the inputs' gradients. In prediction the moving statistics are those
// the forward used: only a training forward changes them
template <typename T>
void backward_t(const std::unordered_map<std::string, std::string>& attrs,
                std::vector<MXTensor>& in, std::vector<MXTensor>& out) {
  const T *dY = in[0].data<T>(), *X = in[1].data<T>(), *gamma = in[2].data<T>();
  const Dims d = dims_of(in[1]);
  const double m = double(d.N) * d.S;
  const bool train = training(in[4]);
  const std::vector<T> K = centres(X, d, train);
  std::vector<double> sum(d.C), sum_sq(d.C), sum_dy(d.C), sum_dy_xk(d.C);
  grad_sums(dY, X, d, K.data(), sum.data(), sum_sq.data(), sum_dy.data(), sum_dy_xk.data());
  const Stats<T> s = stats(d, train, sum.data(), sum_sq.data(), in[5].data<T>(),
                           in[6].data<T>(), std::stod(attrs.at("eps")));
  std::vector<T> p(d.C), q(d.C), r(d.C);
  for (int64_t c = 0; c < d.C; ++c) {
    const double k = double(gamma[c]) * s.inv_std[c], inv_std = s.inv_std[c];
    const double sum_dy_xc = sum_dy_xk[c] - double(s.shift[c]) * sum_dy[c];  // dY * (x - mean)
    p[c] = T(k);
    q[c] = T(train ? -k * inv_std * inv_std * sum_dy_xc / m : 0);
    r[c] = T(train ? -k * sum_dy[c] / m : 0);
    out[1].data<T>()[c] = T(sum_dy_xc * inv_std);  // dgamma
    out[2].data<T>()[c] = T(sum_dy[c]);            // dbeta
  }
  grad_x(dY, X, d, K.data(), s.shift.data(), p.data(), q.data(), r.data(), out[0].data<T>());
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

MXReturnValue backward(const std::unordered_map<std::string, std::string>& attrs,
                       std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                       const OpResource&) {
  switch ((*in)[0].dtype) {
    case kFloat32: backward_t<float>(attrs, *in, *out); return MX_SUCCESS;
    case kFloat64: backward_t<double>(attrs, *in, *out); return MX_SUCCESS;
    default: MX_ERROR_MSG << "d2lbn_batch_norm computes in float32 or float64"; return MX_FAIL;
  }
}

MXReturnValue parse_attrs(const std::unordered_map<std::string, std::string>&, int* num_in,
                          int* num_out) {
  *num_in = 6;
  *num_out = 1;
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
