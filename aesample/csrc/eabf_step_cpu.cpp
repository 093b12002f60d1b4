// One eABF step along a learned CV on the CPU, as a single TorchScript-callable op.
//
// The TorchScript eABF module (aesample/eabf.py) spends its time dispatching a few hundred tiny aten ops; this op
// does the same arithmetic (the exported CV's value and closed-form Jacobian, sampling, the ABF bias, walls and
// pins, the forces) in plain loops. It mirrors _EABFCoreJacobian._step for non-periodic CVs without a box and the
// "implicit" alignment with the eigh rotation; tests/test_eabf_cpu_kernel.py holds it equal to the TorchScript
// path. The smooth bias's refresh stays in TorchScript: the op reports that one is due.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;

const double* f64(const Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kDouble && t.is_contiguous() && t.device().is_cpu(), "eabf_step: ", name,
              " must be a contiguous float64 CPU tensor");
  return t.data_ptr<double>();
}

// the state the op updates in place (acc, last, n_samples): the same checks
double* f64_mut(Tensor& t, const char* name) { return const_cast<double*>(f64(t, name)); }

const int64_t* i64(const Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kLong && t.is_contiguous() && t.device().is_cpu(), "eabf_step: ", name,
              " must be a contiguous int64 CPU tensor");
  return t.data_ptr<int64_t>();
}

// torch.nan_to_num with the given NaN replacement (infinities to the largest finite values)
inline double nan_to_num(double x, double nan) {
  if (std::isnan(x)) return nan;
  if (std::isinf(x)) return x > 0 ? std::numeric_limits<double>::max() : -std::numeric_limits<double>::max();
  return x;
}

// torch.clamp (NaN passes through)
inline double clampd(double x, double lo, double hi) {
  if (std::isnan(x)) return x;
  return x < lo ? lo : (x > hi ? hi : x);
}

// torch.lerp's formula
inline double lerpd(double a, double b, double w) {
  return std::abs(w) < 0.5 ? a + w * (b - a) : b - (b - a) * (1.0 - w);
}

// Eigenvector of the largest eigenvalue of a symmetric 4 x 4 matrix (its lower triangle, row-major), by cyclic
// Jacobi rotations: ~10^3 flops, where a LAPACK call through ATen costs tens of microseconds of dispatch and checks.
// The sign is arbitrary, as eigh's: only q q^T is used.
void top_eigenvector4(const double* m, double* q) {
  double a[4][4], v[4][4];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      a[i][j] = i >= j ? m[4 * i + j] : m[4 * j + i];
      v[i][j] = i == j ? 1.0 : 0.0;
    }
  for (int sweep = 0; sweep < 64; ++sweep) {
    double off = 0.0, diag = 0.0;
    for (int i = 0; i < 4; ++i) {
      diag += a[i][i] * a[i][i];
      for (int j = i + 1; j < 4; ++j) off += a[i][j] * a[i][j];
    }
    if (!(off > 1e-36 * diag)) break;  // converged (also stops on NaN)
    for (int p = 0; p < 3; ++p)
      for (int r = p + 1; r < 4; ++r) {
        if (a[p][r] == 0.0) continue;
        const double theta = (a[r][r] - a[p][p]) / (2.0 * a[p][r]);
        const double t = (theta >= 0.0 ? 1.0 : -1.0) / (std::abs(theta) + std::sqrt(theta * theta + 1.0));
        const double c = 1.0 / std::sqrt(t * t + 1.0), s = t * c;
        for (int k = 0; k < 4; ++k) {  // columns p, r of A and V: A <- A G, V <- V G
          const double akp = a[k][p], akr = a[k][r];
          a[k][p] = c * akp - s * akr;
          a[k][r] = s * akp + c * akr;
          const double vkp = v[k][p], vkr = v[k][r];
          v[k][p] = c * vkp - s * vkr;
          v[k][r] = s * vkp + c * vkr;
        }
        for (int k = 0; k < 4; ++k) {  // rows p, r: A <- G^T A
          const double apk = a[p][k], ark = a[r][k];
          a[p][k] = c * apk - s * ark;
          a[r][k] = s * apk + c * ark;
        }
      }
  }
  int best = 0;
  for (int i = 1; i < 4; ++i)
    if (a[i][i] > a[best][best]) best = i;
  for (int i = 0; i < 4; ++i) q[i] = v[i][best];
}

inline double round_to(double x, bool single) { return single ? static_cast<double>(static_cast<float>(x)) : x; }

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, bool> eabf_step(
    const Tensor& positions, const Tensor& sample_t,
    // the exported CV (ExportedCV / AlignedPositions buffers)
    const Tensor& atom_indices, const Tensor& horn_from_x_t, const Tensor& rot_map, const Tensor& reference,
    const Tensor& ref_cross, const Tensor& cross_map_t, const Tensor& w1_centred, at::TensorList weights,
    at::TensorList biases,
    // the eABF core's constants and state (_EABFCore buffers)
    const Tensor& ext_index, const Tensor& force_index, const Tensor& neg_kappa, const Tensor& bin_origin,
    const Tensor& inv_width, const Tensor& bin_last, const Tensor& strides, const Tensor& row_offset, Tensor acc,
    Tensor last, Tensor n_samples, const Tensor& shared, const Tensor& zrows_of_bin, const Tensor& ramp_scale,
    const Tensor& ramp_shift, double full_samples, bool step_ramp, const Tensor& pot, const Tensor& pot_cover,
    const Tensor& cell_origin, const Tensor& cell_inv_width, const Tensor& cell_last, const Tensor& cell_strides,
    const Tensor& corner, const Tensor& restr_lo, const Tensor& restr_hi, const Tensor& neg_restr_k,
    bool has_shared, bool gate, bool smooth, double smooth_interval) {
  const bool single = positions.scalar_type() == at::kFloat;
  TORCH_CHECK(single || positions.scalar_type() == at::kDouble, "eabf_step: positions must be float32 or float64");
  Tensor pos_t = positions.to(at::kDouble).contiguous();
  const double sample = sample_t.item<double>();
  const double* pos = pos_t.data_ptr<double>();
  const int64_t n_particles = pos_t.size(0);

  // ---------------------------------------------------------------- the CV: value and Jacobian
  const int64_t n = atom_indices.size(0), n3 = 3 * n;
  const int64_t* sel = i64(atom_indices, "atom_indices");
  std::vector<double> xs(n3), xc(n3);
  double mean[3] = {0.0, 0.0, 0.0};
  for (int64_t i = 0; i < n; ++i)
    for (int a = 0; a < 3; ++a) {
      xs[3 * i + a] = pos[3 * sel[i] + a];
      mean[a] += xs[3 * i + a];
    }
  for (int a = 0; a < 3; ++a) mean[a] /= static_cast<double>(n);
  for (int64_t i = 0; i < n; ++i)
    for (int a = 0; a < 3; ++a) xc[3 * i + a] = xs[3 * i + a] - mean[a];
  // Horn's quaternion matrix (4, 4) and its top eigenvector: the rotation onto the reference
  const double* horn = f64(horn_from_x_t, "horn_from_x_t");
  double h16[16];
  for (int r = 0; r < 16; ++r) {
    double s = 0.0;
    for (int64_t j = 0; j < n3; ++j) s += horn[r * n3 + j] * xs[j];
    h16[r] = s;
  }
  double q[4];
  top_eigenvector4(h16, q);
  const double* rm = f64(rot_map, "rot_map");
  double R0[9];
  for (int r = 0; r < 9; ++r) {
    double s = 0.0;
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 4; ++b) s += rm[r * 16 + 4 * a + b] * q[a] * q[b];
    R0[r] = s;
  }
  // aligned coordinates and the implicit derivative's factors P (3n, 3), Q (3, 3n)
  std::vector<double> xr(n3);
  for (int64_t i = 0; i < n; ++i)
    for (int a = 0; a < 3; ++a) {
      double s = 0.0;
      for (int b = 0; b < 3; ++b) s += xc[3 * i + b] * R0[3 * a + b];
      xr[3 * i + a] = s;
    }
  const double* ref = f64(reference, "reference");
  double S[9] = {0};
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b) {
      double s = 0.0;
      for (int64_t i = 0; i < n; ++i) s += xr[3 * i + a] * ref[3 * i + b];
      S[3 * a + b] = s;
    }
  const double shift = (S[0] + S[4] + S[8]) * (1.0 + 1e-12) + 1e-30;
  double Jm[9];
  for (int r = 0; r < 9; ++r) Jm[r] = S[r] - ((r % 4 == 0) ? shift : 0.0);
  auto cross = [&](int r1, int r2, double* out) {
    const double* u = Jm + 3 * r1;
    const double* v = Jm + 3 * r2;
    out[0] = u[1] * v[2] - u[2] * v[1];
    out[1] = u[2] * v[0] - u[0] * v[2];
    out[2] = u[0] * v[1] - u[1] * v[0];
  };
  double c[9];
  cross(1, 2, c);
  cross(2, 0, c + 3);
  cross(0, 1, c + 6);
  const double det = Jm[0] * c[0] + Jm[1] * c[1] + Jm[2] * c[2];
  const double* rc = f64(ref_cross, "ref_cross");
  std::vector<double> Q(3 * n3);
  for (int a = 0; a < 3; ++a)
    for (int64_t j = 0; j < n3; ++j) {
      double s = 0.0;
      for (int r = 0; r < 3; ++r) s += c[3 * r + a] * rc[r * n3 + j];
      Q[a * n3 + j] = s / det;
    }
  const double* cm = f64(cross_map_t, "cross_map_t");
  std::vector<double> P(n3 * 3);  // row 3i+s, column t: (xr_i . cross_map_t)[3s+t]
  for (int64_t i = 0; i < n; ++i)
    for (int k = 0; k < 9; ++k) {
      double s = 0.0;
      for (int a = 0; a < 3; ++a) s += xr[3 * i + a] * cm[a * 9 + k];
      P[9 * i + k] = s;
    }
  std::vector<double> QK(3 * n3);
  for (int a = 0; a < 3; ++a)
    for (int64_t i = 0; i < n; ++i)
      for (int u = 0; u < 3; ++u) {
        double s = 0.0;
        for (int t = 0; t < 3; ++t) s += Q[a * n3 + 3 * i + t] * R0[3 * t + u];
        QK[a * n3 + 3 * i + u] = s;
      }
  // first layer: W1 M = W1 C kron R0 - (W1 P)(Q C kron R0), and its pre-activation
  TORCH_CHECK(weights.size() >= 1 && weights.size() == biases.size(), "eabf_step: weights and biases differ");
  const Tensor& W1t = weights[0];
  const int64_t h1 = W1t.size(0);
  TORCH_CHECK(W1t.size(1) == n3, "eabf_step: first layer width ", W1t.size(1), " != 3 x ", n, " atoms");
  const double* W1 = f64(W1t, "weights[0]");
  const double* w1c = f64(w1_centred, "w1_centred");
  std::vector<double> J(h1 * n3), h(h1);
  const double* b0 = f64(biases[0], "biases[0]");
  for (int64_t r = 0; r < h1; ++r) {
    double wp[3] = {0.0, 0.0, 0.0};
    for (int64_t m = 0; m < n3; ++m)
      for (int t = 0; t < 3; ++t) wp[t] += W1[r * n3 + m] * P[3 * m + t];
    double pre = 0.0;
    for (int64_t i = 0; i < n; ++i)
      for (int u = 0; u < 3; ++u) {
        double s = 0.0;
        for (int t = 0; t < 3; ++t) s += w1c[(r * n + i) * 3 + t] * R0[3 * t + u];
        const int64_t j = 3 * i + u;
        for (int a = 0; a < 3; ++a) s -= wp[a] * QK[a * n3 + j];
        J[r * n3 + j] = s;
        pre += s * xs[j];
      }
    h[r] = b0[r] + pre;
  }
  // the other layers (tanh between layers), value and Jacobian together
  for (size_t L = 1; L < weights.size(); ++L) {
    const Tensor& Wt = weights[L];
    const int64_t out = Wt.size(0), in = Wt.size(1);
    const double* W = f64(Wt, "weights[L]");
    const double* b = f64(biases[L], "biases[L]");
    std::vector<double> y(in), dy(in), Jn(out * n3, 0.0), hn(out);
    for (int64_t k = 0; k < in; ++k) {
      y[k] = std::tanh(h[k]);
      dy[k] = 1.0 - y[k] * y[k];
    }
    for (int64_t o = 0; o < out; ++o) {
      double s = 0.0;
      for (int64_t k = 0; k < in; ++k) {
        const double w = W[o * in + k] * dy[k];
        s += W[o * in + k] * y[k];
        for (int64_t j = 0; j < n3; ++j) Jn[o * n3 + j] += w * J[k * n3 + j];
      }
      hn[o] = s + b[o];
    }
    J.swap(Jn);
    h.swap(hn);
  }
  const int64_t d = static_cast<int64_t>(h.size());
  // the TorchScript CV returns its value and Jacobian in the positions' dtype
  std::vector<double> xi(d);
  for (int64_t k = 0; k < d; ++k) xi[k] = round_to(h[k], single);
  for (auto& v : J) v = round_to(v, single);

  // ---------------------------------------------------------------- coupling and sampling
  const int64_t* ext = i64(ext_index, "ext_index");
  TORCH_CHECK(ext_index.size(0) == d, "eabf_step: ", ext_index.size(0), " extended particles for a ", d, "-d CV");
  std::vector<double> ex(d * 3), lam(d), diff(d), f_lam(d);
  const double* nk = f64(neg_kappa, "neg_kappa");
  for (int64_t k = 0; k < d; ++k) {
    for (int a = 0; a < 3; ++a) ex[3 * k + a] = pos[3 * ext[k] + a];
    lam[k] = ex[3 * k];
    diff[k] = xi[k] - lam[k];
    f_lam[k] = nk[k] * diff[k];
  }
  double* lastp = f64_mut(last, "last");
  double* ns = f64_mut(n_samples, "n_samples");
  double* A = f64_mut(acc, "acc");
  const int64_t width = 1 + d;
  bool changed = false;
  for (int64_t k = 0; k < d; ++k) changed = changed || (xi[k] != lastp[k]) || (lam[k] != lastp[d + k]);
  const bool take = changed && sample > 0.5;
  if (take) {
    for (int64_t k = 0; k < d; ++k) {
      lastp[k] = xi[k];
      lastp[d + k] = lam[k];
    }
    ns[0] += 1.0;
  }
  // binning of [xi; lambda]: row 0 on the CZAR xi grid, row 1 on the lambda grid
  const double *bo = f64(bin_origin, "bin_origin"), *iw = f64(inv_width, "inv_width"),
               *bl = f64(bin_last, "bin_last"), *st = f64(strides, "strides"), *ro = f64(row_offset, "row_offset");
  int64_t rows[2];
  bool inside[2];
  for (int r = 0; r < 2; ++r) {
    const double* v = r == 0 ? xi.data() : lam.data();
    double row = 0.0;
    bool in = true;
    for (int64_t k = 0; k < d; ++k) {
      const double t = nan_to_num(bo[r * d + k] + v[k] * iw[r * d + k], -1.0);
      const double i = std::floor(t);
      const double ic = clampd(i, 0.0, bl[r * d + k]);
      in = in && (i == ic);
      row += ic * st[r * d + k];
    }
    rows[r] = static_cast<int64_t>(row + ro[r]);
    inside[r] = in;
  }
  if (take)
    for (int r = 0; r < 2; ++r)
      if (inside[r]) {
        A[rows[r] * width] += 1.0;
        for (int64_t k = 0; k < d; ++k) A[rows[r] * width + 1 + k] += f_lam[k];
      }
  const bool refresh = smooth && take && std::fmod(ns[0], smooth_interval) == 0.0;

  // ---------------------------------------------------------------- ABF bias on lambda
  const double* sh = has_shared ? f64(shared, "shared") : nullptr;
  auto got = [&](int64_t row, int64_t col) {
    return A[row * width + col] + (sh ? sh[row * width + col] : 0.0);
  };
  const double n_lam = got(rows[1], 0);
  double ramp;
  if (step_ramp) {
    ramp = n_lam >= full_samples ? 1.0 : 0.0;
  } else {
    ramp = clampd(f64(ramp_shift, "ramp_shift")[0] + n_lam * f64(ramp_scale, "ramp_scale")[0], 0.0, 1.0);
  }
  std::vector<double> fbias(d);
  for (int64_t k = 0; k < d; ++k) fbias[k] = got(rows[1], 1 + k) / std::max(n_lam, 1.0) * ramp;
  if (smooth) {
    const double *co = f64(cell_origin, "cell_origin"), *ciw = f64(cell_inv_width, "cell_inv_width"),
                 *cl = f64(cell_last, "cell_last"), *cs = f64(cell_strides, "cell_strides"),
                 *cn = f64(corner, "corner"), *pp = f64(pot, "pot"), *pc = f64(pot_cover, "pot_cover");
    std::vector<double> frac(d), low(d);
    for (int64_t k = 0; k < d; ++k) {
      const double u = nan_to_num(co[k] + lam[k] * ciw[k], 0.0);
      low[k] = clampd(std::floor(u), 0.0, cl[k]);
      frac[k] = u - low[k];
    }
    const int64_t nc = int64_t(1) << d;
    std::vector<double> g(d, 0.0);
    double share = std::numeric_limits<double>::infinity();
    for (int64_t cidx = 0; cidx < nc; ++cidx) {
      double row = 0.0;
      for (int64_t k = 0; k < d; ++k) row += (low[k] + cn[cidx * d + k]) * cs[k];
      const int64_t rr = static_cast<int64_t>(row);
      const double p = pp[rr];
      share = std::min(share, pc[rr]);
      for (int64_t k = 0; k < d; ++k) {
        double others = 1.0;
        for (int64_t m = 0; m < d; ++m)
          if (m != k) others *= cn[cidx * d + m] > 0.5 ? frac[m] : 1.0 - frac[m];
        g[k] += others * (2.0 * cn[cidx * d + k] - 1.0) * p;
      }
    }
    for (int64_t k = 0; k < d; ++k) fbias[k] = lerpd(fbias[k], g[k] * ciw[k], share);
  }
  bool apply = inside[1];
  if (gate) {
    const int64_t zw = zrows_of_bin.size(1);
    const int64_t* zr = i64(zrows_of_bin, "zrows_of_bin") + rows[1] * zw;
    double reached = 0.0;
    for (int64_t j = 0; j < zw; ++j) reached += got(zr[j], 0);
    apply = apply && reached > 0.0;
  }
  for (int64_t k = 0; k < d; ++k) fbias[k] *= apply ? 1.0 : 0.0;

  // ---------------------------------------------------------------- walls, pins, energy and forces
  const double *lo = f64(restr_lo, "restr_lo"), *hi = f64(restr_hi, "restr_hi"), *kr = f64(neg_restr_k, "neg_restr_k");
  std::vector<double> f_ext(d * 3);
  double e_restr = 0.0, e_coupling = 0.0;
  for (int64_t k = 0; k < d; ++k) {
    for (int a = 0; a < 3; ++a) {
      const double x = ex[3 * k + a];
      const double dx = x - clampd(x, lo[3 * k + a], hi[3 * k + a]);
      const double fr = kr[3 * k + a] * dx;
      e_restr += fr * dx;
      f_ext[3 * k + a] = fr + (a == 0 ? 1.0 : 0.0) * (fbias[k] - f_lam[k]);
    }
    e_coupling += f_lam[k] * diff[k];
  }
  const double energy = -0.5 * (e_coupling + e_restr);
  Tensor forces = at::zeros({n_particles, 3}, at::kDouble);
  double* F = forces.data_ptr<double>();
  const int64_t* fi = i64(force_index, "force_index");
  for (int64_t i = 0; i < n; ++i)
    for (int a = 0; a < 3; ++a) {
      double s = 0.0;
      for (int64_t k = 0; k < d; ++k) s += f_lam[k] * J[k * n3 + 3 * i + a];
      F[3 * fi[i] + a] += s;
    }
  for (int64_t k = 0; k < d; ++k)
    for (int a = 0; a < 3; ++a) F[3 * fi[n + k] + a] += f_ext[3 * k + a];

  auto opts = at::TensorOptions().dtype(at::kDouble);
  Tensor xi_t = at::empty({d}, opts), lam_t = at::empty({d}, opts), fb_t = at::empty({d}, opts);
  for (int64_t k = 0; k < d; ++k) {
    xi_t.data_ptr<double>()[k] = xi[k];
    lam_t.data_ptr<double>()[k] = lam[k];
    fb_t.data_ptr<double>()[k] = fbias[k];
  }
  Tensor e_t = at::scalar_tensor(energy, opts);
  return std::make_tuple(e_t.to(positions.scalar_type()), forces.to(positions.scalar_type()), xi_t, lam_t, fb_t,
                         refresh);
}

TORCH_LIBRARY(aesample, m) {
  m.def(
      "eabf_step(Tensor positions, Tensor sample, Tensor atom_indices, Tensor horn_from_x_t, Tensor rot_map, "
      "Tensor reference, Tensor ref_cross, Tensor cross_map_t, Tensor w1_centred, Tensor[] weights, Tensor[] biases, "
      "Tensor ext_index, Tensor force_index, Tensor neg_kappa, Tensor bin_origin, Tensor inv_width, Tensor bin_last, "
      "Tensor strides, Tensor row_offset, Tensor(a!) acc, Tensor(b!) last, Tensor(c!) n_samples, Tensor shared, "
      "Tensor zrows_of_bin, Tensor ramp_scale, Tensor ramp_shift, float full_samples, bool step_ramp, Tensor pot, "
      "Tensor pot_cover, Tensor cell_origin, Tensor cell_inv_width, Tensor cell_last, Tensor cell_strides, "
      "Tensor corner, Tensor restr_lo, Tensor restr_hi, Tensor neg_restr_k, bool has_shared, bool gate, bool smooth, "
      "float smooth_interval) -> (Tensor, Tensor, Tensor, Tensor, Tensor, bool)");
  m.impl("eabf_step", TORCH_FN(eabf_step));
}
