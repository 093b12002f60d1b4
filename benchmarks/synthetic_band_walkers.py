"""Synthetic 2D eABF benchmark with an exact answer: one particle in a curved low-free-energy band with a 6 kT
barrier and a 2 kT tilt, CV = its (x, y), the loop's eABF settings (30 ABF bins on [-1.5, 1.5], kappa 3000,
ramp 50/100, period 0.2 ps, 2 fs, Reference platform; 300 free dummy particles only speed up the read-out).

    OMP_NUM_THREADS=1 python benchmarks/synthetic_band_walkers.py N_STEPS N_WALKERS CZAR_BINS FRICTION
    OMP_NUM_THREADS=1 python benchmarks/synthetic_band_walkers.py 50000 8 120 10

Per walker: Delta F (theta > 0 vs theta <= 0) from the CZAR free energy integrated with count weights (w1) and
without (u1), both with czar_min_count 1 and 10 (w10, u10), and per-walker error bars (integer block bootstrap,
Bayesian block bootstrap with min_count 1 and 10, 20 blocks). Last line: mean - exact, walkers' SD, RMS error
bars and their ratio to the walkers' SD (kT). The test tests/test_estimators_integration.py runs the same model.
"""
import sys, time
import numpy as np, openmm
from aesample import cvs, estimators as est
from aesample.eabf import ExtendedABF, EABFState
_weighted_sum_of_states = EABFState.weighted_sum  # the md helper it once imported became this method
T=300.0; KT=est.kT(T); NDUMMY=300
P=dict(kb=1000.0, R=1.0, cx=-0.5, h=6*KT, th0=0.5, s=2*KT, kc=1000.0)
EXPR=("0.5*kb*(r-R)^2 + h*((th/th0)^2-1)^2 + s*th + 0.5*kc*z^2;"
      "r=sqrt((x-cx)^2+y^2); th=atan2(y, x-cx)")
def U(x,y):
    r=np.hypot(x-P['cx'],y); th=np.arctan2(y,x-P['cx'])
    return 0.5*P['kb']*(r-P['R'])**2+P['h']*((th/P['th0'])**2-1)**2+P['s']*th
def exact_df():
    q=np.linspace(-1.5,1.5,1501); X,Y=np.meshgrid(q,q,indexing='ij'); u=U(X,Y); p=np.exp(-(u-u.min())/KT)
    th=np.arctan2(Y,X-P['cx']); return -KT*np.log(p[th>0].sum()/p[th<=0].sum())
def walker(seed, nsteps, nblocks, zbins, friction, dt=0.002):
    system=openmm.System(); system.addParticle(1.0)
    f=openmm.CustomExternalForce(EXPR)
    for k,v in P.items(): f.addGlobalParameter(k,v)
    f.addParticle(0,[]); system.addForce(f)
    for _ in range(NDUMMY): system.addParticle(1.0)  # free particles: more read-out slots per force evaluation
    e=ExtendedABF(system, cvs.PositionXY(0), -1.5, 1.5, 30, 3000.0, extendedPeriod=0.2, fullSamples=100, minSamples=50,
                  positions=np.zeros((1+NDUMMY,3)), czarBins=zbins)
    integ=openmm.LangevinMiddleIntegrator(T, friction, dt); integ.setRandomNumberSeed(seed)
    ctx=openmm.Context(system, integ, openmm.Platform.getPlatformByName('Reference'))
    x0=np.zeros((1+NDUMMY,3)); x0[0]=[P['cx']+np.cos(-0.5), np.sin(-0.5), 0.0]; x0[1:,0]=np.arange(NDUMMY)*0.5
    ctx.setPositions(e.extendPositions(x0))
    ctx.setVelocitiesToTemperature(T, seed)
    snaps=[]
    for b in range(nblocks):
        integ.step(nsteps//nblocks); snaps.append(e.getState(ctx))
    return snaps
def czar_df(st, min_count=10, weighted=True):
    g=st.czar_gradient(T,min_count); A=est.integrate_gradient(g, st.z_bin_width, st.periodic, counts=st.zcount if weighted else None)
    cx,cy=st.z_centers(); X,Y=np.meshgrid(cx,cy,indexing='ij'); th=np.arctan2(Y,X-P['cx'])
    ok=np.isfinite(A); p=np.where(ok,np.exp(-(np.where(ok,A,0))/KT),0)
    return -KT*np.log(p[th>0].sum()/p[th<=0].sum())
def unweighted_df(st):
    g=st.czar_gradient(T,1); A=est.integrate_gradient(g, st.z_bin_width, st.periodic)
    cx,cy=st.z_centers(); X,Y=np.meshgrid(cx,cy,indexing='ij'); th=np.arctan2(Y,X-P['cx'])
    ok=np.isfinite(A); p=np.where(ok,np.exp(-(np.where(ok,A,0))/KT),0)
    return -KT*np.log(p[th>0].sum()/p[th<=0].sum())
def fracB(st):
    cx,cy=st.z_centers(); X,Y=np.meshgrid(cx,cy,indexing='ij'); th=np.arctan2(Y,X-P['cx'])
    return st.zcount[th>0].sum()/st.zcount.sum()
def boot2(snaps, n=60, seed=0, fixed=0, stat=None):
    blocks=[snaps[0]]+[_weighted_sum_of_states([(1,b),(-1,a)]) for a,b in zip(snaps[:-1],snaps[1:])]
    rng=np.random.default_rng(seed); out=[]
    B=len(blocks)
    for _ in range(n):
        idx=np.concatenate([np.arange(fixed), rng.integers(fixed,B,B-fixed)])
        d=np.bincount(idx,minlength=B)
        out.append(stat(_weighted_sum_of_states([(int(c),b) for c,b in zip(d,blocks) if c])))
    return np.std(out,ddof=1)
def bayes(snaps, n=60, seed=0, mc=1):
    blocks=[snaps[0]]+[_weighted_sum_of_states([(1,b),(-1,a)]) for a,b in zip(snaps[:-1],snaps[1:])]
    rng=np.random.default_rng(seed); out=[]; B=len(blocks)
    for _ in range(n):
        d=rng.dirichlet(np.ones(B))*B
        out.append(czar_df(_weighted_sum_of_states([(float(c),b) for c,b in zip(d,blocks)]),mc))
    return np.std(out,ddof=1)
def boot(snaps, n=100, seed=0, k=None):
    blocks=[snaps[0]]+[_weighted_sum_of_states([(1,b),(-1,a)]) for a,b in zip(snaps[:-1],snaps[1:])]
    rng=np.random.default_rng(seed); out=[]
    B=len(blocks)
    for _ in range(n):
        if k is None:
            idx=rng.integers(0,B,B)
        else:
            i=np.arange(B); lo=np.maximum(0,i-k); hi=np.minimum(B-1,i+k); idx=lo+(rng.random(B)*(hi-lo+1)).astype(int)
        d=np.bincount(idx,minlength=B)
        out.append(czar_df(_weighted_sum_of_states([(int(c),b) for c,b in zip(d,blocks) if c]),1))
    return np.std(out,ddof=1)
def batch(snaps, K):
    B=len(snaps); ends=[snaps[(i+1)*B//K-1] for i in range(K)]
    parts=[ends[0]]+[_weighted_sum_of_states([(1,b),(-1,a)]) for a,b in zip(ends[:-1],ends[1:])]
    v=np.array([czar_df(p,1) for p in parts])
    v=v[np.isfinite(v)]
    return np.std(v,ddof=1)/np.sqrt(len(v)) if len(v)>1 else np.nan
if __name__=='__main__':
    nsteps=int(sys.argv[1]); nw=int(sys.argv[2]); zb=int(sys.argv[3]); fr=float(sys.argv[4])
    ex=exact_df(); print('exact dF', ex/KT,'kT')
    dfs,errs,uw=[],[],[]; W10=[]
    for j in range(nw):
        t=time.time(); sn=walker(100+j, nsteps, 20, zb, fr); st=sn[-1]
        v=[czar_df(st,mc,w) for mc in (1,10) for w in (True,False)]; W10.append(v[2])
        e3=[boot(sn,60,k=None), bayes(sn,mc=1), bayes(sn,mc=10), boot2(sn,stat=lambda s: czar_df(s,10))]
        dfs.append(v[0]); errs.append(e3); uw.append(v[1])
        print(f'walker {j}: w1 {v[0]/KT:.3f} u1 {v[1]/KT:.3f} w10 {v[2]/KT:.3f} u10 {v[3]/KT:.3f} err(iid1,bayes1,bayes10,iid10) {np.round(np.array(e3)/KT,3)} ({time.time()-t:.1f}s)', flush=True)
    dfs=np.array(dfs)/KT; errs=np.array(errs)/KT
    print(f'mean-exact {dfs.mean()-ex/KT:.3f} SD {dfs.std(ddof=1):.3f} mean err {np.round(np.sqrt((errs**2).mean(0)),3)} ratio {np.round(np.sqrt((errs**2).mean(0))/dfs.std(ddof=1),2)} w10 SD {np.std(W10,ddof=1)/KT:.3f}; unweighted SD {np.std(uw,ddof=1)/KT:.3f} mean-exact {np.mean(uw)/KT-ex/KT:.3f}')
