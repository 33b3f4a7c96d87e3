// Memory bandwidth of this machine on OpenMP threads: read, copy, fill of a 64 MiB buffer,
// plain against streaming (non-temporal) stores, and fills of freshly allocated buffers with
// 4 KiB pages and with MADV_HUGEPAGE. Min of 10 repetitions. Used for the floors of the
// composite kernels in benchmarks/RESULTS.md. Needs AVX-512F.
//
//   gcc -O3 -fopenmp -march=native benchmarks/bandwidth.c -o /tmp/bw && \
//     flock /tmp/omnifast-bench.lock env OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE /tmp/bw
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#define N (64ull<<20)/4
float *a,*b;
double t_sum(){double s=0;
#pragma omp parallel for reduction(+:s) schedule(static)
 for(size_t i=0;i<N;i+=16){__m512 v=_mm512_loadu_ps(a+i); s+=_mm512_reduce_add_ps(v);} return s;}
void t_copy(){
#pragma omp parallel for schedule(static)
 for(size_t i=0;i<N;i+=16)_mm512_storeu_ps(b+i,_mm512_loadu_ps(a+i));}
void t_copy_nt(){
#pragma omp parallel for schedule(static)
 for(size_t i=0;i<N;i+=16)_mm512_stream_ps(b+i,_mm512_loadu_ps(a+i)); _mm_sfence();}
void t_fill(float*p){
#pragma omp parallel for schedule(static)
 for(size_t i=0;i<N;i+=16)_mm512_storeu_ps(p+i,_mm512_set1_ps(1.f));}
void t_fill_nt(float*p){
#pragma omp parallel for schedule(static)
 for(size_t i=0;i<N;i+=16)_mm512_stream_ps(p+i,_mm512_set1_ps(1.f)); _mm_sfence();}
float* fresh(int huge){float*p=aligned_alloc(2<<20,N*4); if(huge)madvise(p,N*4,MADV_HUGEPAGE); return p;}
int main(){
 a=aligned_alloc(2<<20,N*4);b=aligned_alloc(2<<20,N*4);
 memset(a,1,N*4);memset(b,1,N*4);
 double best[8]; for(int j=0;j<8;j++)best[j]=1e9;
 volatile double sink=0;
 for(int it=0;it<10;it++){
  double t0=now(); sink+=t_sum(); double t1=now(); if(t1-t0<best[0])best[0]=t1-t0;
  t0=now(); t_copy(); t1=now(); if(t1-t0<best[1])best[1]=t1-t0;
  t0=now(); t_copy_nt(); t1=now(); if(t1-t0<best[2])best[2]=t1-t0;
  t0=now(); t_fill(b); t1=now(); if(t1-t0<best[3])best[3]=t1-t0;
  t0=now(); t_fill_nt(b); t1=now(); if(t1-t0<best[4])best[4]=t1-t0;
  float*p=fresh(0); t0=now(); t_fill(p); t1=now(); if(t1-t0<best[5])best[5]=t1-t0; free(p);
  p=fresh(1); t0=now(); t_fill(p); t1=now(); if(t1-t0<best[6])best[6]=t1-t0; free(p);
  p=fresh(1); t0=now(); t_fill_nt(p); t1=now(); if(t1-t0<best[7])best[7]=t1-t0; free(p);
 }
 const char*nm[]={"read sum","copy","copy NT","fill (warm buf)","fill NT (warm)","fill fresh 4k","fill fresh THP","fillNT fresh THP"};
 double bytes[]={N*4.,2*N*4.,2*N*4.,N*4.,N*4.,N*4.,N*4.,N*4.};
 for(int j=0;j<8;j++)printf("%-18s %7.2f ms  %6.1f GB/s (%d thr)\n",nm[j],best[j]*1e3,bytes[j]/best[j]/1e9,omp_get_max_threads());
 return 0;}
