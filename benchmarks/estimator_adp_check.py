"""Issue 14 benchmarks 1-2 read back: (phi, psi) and phi eABF runs of `aesample eabf` against the (phi, psi)
well-tempered metadynamics reference of benchmarks/reference_fes.py (runs/reference, 20 ns).

    python benchmarks/reference_fes.py runs/reference --ns 20
    aesample eabf --system alanine-dipeptide --cv phi,psi --ns 2 --out runs/b14_phipsi --seed 1
    aesample eabf --system alanine-dipeptide --cv phi --ns 2 --out runs/b14_phi --seed 1
    python benchmarks/estimator_adp_check.py [--reference REF.npz] [--phipsi DIR ...] [--phi DIR]
    (defaults: runs/reference/reference_phi-psi_20ns_seed2.npz, runs/b14_phipsi, runs/b14_phi)

Prints Delta F (phi > 0 and C7ax 0 < phi < 2.3 vs the rest), the F(phi) RMS deviation where F < 25 kJ/mol, the
seam region's RMS and the 1D closure, for czar_min_count 1 and 10.
"""
import argparse, numpy as np, sys
sys.path.insert(0,'benchmarks')
from aesample.md import load_result
from aesample import estimators as est
T=300.0; KT=est.kT(T)
ap=argparse.ArgumentParser(); ap.add_argument('--reference', default='runs/reference/reference_phi-psi_20ns_seed2.npz')
ap.add_argument('--phipsi', nargs='*', default=['runs/b14_phipsi']); ap.add_argument('--phi', default='runs/b14_phi')
args=ap.parse_args()
ref=np.load(args.reference)
grid=ref['grid']; fphi_ref=ref['f_phi']; fes=ref['fes']  # fes [psi, phi]
def df_profile(phi, f, sel):
    p=np.exp(-(f-np.nanmin(f))/KT); p[~np.isfinite(p)]=0
    return -KT*np.log(p[sel(phi)].sum()/p[~sel(phi)].sum())
c7ax=lambda x:(x>0)&(x<2.3); pos=lambda x:x>0
# reference on fine interpolation (periodic)
fine=np.linspace(-np.pi,np.pi,7201)[:-1]
rf=np.interp(fine, grid, fphi_ref, period=2*np.pi)
print('reference 2D metad 20ns: dF(phi>0)=%.2f dF(C7ax vs rest)=%.2f'%(df_profile(fine,rf,pos),df_profile(fine,rf,c7ax)))
# reference regions from 2D
P2=np.exp(-(fes-fes.min())/KT); PSI,PHI=np.meshgrid(grid,grid,indexing='ij')
for name in args.phipsi:
    st=load_result(name).state
    for mc in (1,10):
        A=st.czar_free_energy(T,mc)   # [phi, psi]
        cphi,cpsi=st.z_centers()
        p=np.where(np.isfinite(A),np.exp(-np.nan_to_num(A,nan=0)/KT),0)
        fphi=-KT*np.log(p.sum(1)); fphi-=fphi.min()
        X=cphi
        d1=-KT*np.log(p[pos(X)].sum()/p[~pos(X)].sum()); d2=-KT*np.log(p[c7ax(X)].sum()/p[~c7ax(X)].sum())
        r=np.interp(X,grid,fphi_ref,period=2*np.pi); ok=np.isfinite(fphi)&(r<25)
        dev=fphi[ok]-r[ok]; dev-=np.average(dev,weights=np.exp(-r[ok]/KT))
        print(f'{name} min_count {mc}: dF(phi>0)={d1:.2f} dF(C7ax)={d2:.2f} F(phi) RMS(F<25)={np.sqrt(np.mean(dev**2)):.2f} bins {np.isfinite(A).sum()}/{A.size}')
st=load_result(args.phi).state if args.phi else None
for mc in ((1,10) if st is not None else ()):
    A=st.czar_free_energy(T,mc); X=st.z_centers()[0]
    r=np.interp(X,grid,fphi_ref,period=2*np.pi); ok=np.isfinite(A)&(r<25)
    dev=A[ok]-r[ok]; dev-=np.average(dev,weights=np.exp(-r[ok]/KT))
    seam=ok&((X>2.4)|(X<-2.9))
    print(f'phi 1D min_count {mc}: dF(phi>0)={df_profile(X,A,pos):.2f} RMS(F<25)={np.sqrt(np.mean(dev**2)):.2f} max|dev|={np.abs(dev).max():.2f} seam RMS={np.sqrt(np.mean((A[seam]-r[seam]-np.average(A[ok]-r[ok],weights=np.exp(-r[ok]/KT)))**2)):.2f} closure={est.closure_1d(st.czar_gradient(T,mc)[:,0],st.z_bin_width[0]):.2f}')
