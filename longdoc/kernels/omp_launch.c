/* The compiled kernels' parallel loops on the OpenMP threads torch already runs.
 *
 * TVM-generated code starts a parallel loop through the function pointer
 * `__TVMBackendParallelLaunch` of its library, which TVM's runtime points at its own thread pool.
 * Two pools on the same cores get in each other's way: after each torch operation libgomp's
 * threads spin for milliseconds while the kernel's threads need those cores, and the other way
 * round. `kernels.tvm_backend` compiles this file at run time, linked against the OpenMP runtime
 * that torch loaded, and points the kernel library's launcher here: one team of threads for both.
 *
 * The task count is what TVM asks for, else the calling thread's OpenMP thread count (torch's
 * `set_num_threads`). Every task runs even when OpenMP gives a smaller team (a call from inside
 * a parallel region): thread `t` runs tasks `t, t + team, ...`. The kernels use no barrier, so
 * the environment's `sync_handle` stays empty.
 *
 * Compiled by whatever C or C++ compiler TVM's own linker step finds, hence the extern "C". */
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  void *sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv *penv, void *cdata);

void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags);
int omp_get_thread_num(void);
int omp_get_num_threads(void);
int omp_get_max_threads(void);

struct job {
  FTVMParallelLambda lambda;
  void *cdata;
  TVMParallelGroupEnv env;
  volatile int failed;
};

static void run_tasks(void *arg) {
  struct job *job = (struct job *)arg;
  int team = omp_get_num_threads();
  for (int task = omp_get_thread_num(); task < job->env.num_task; task += team) {
    if (job->lambda(task, &job->env, job->cdata) != 0) job->failed = 1;
  }
}

int longdoc_omp_parallel_launch(FTVMParallelLambda lambda, void *cdata, int num_task) {
  int tasks = num_task > 0 ? num_task : omp_get_max_threads();
  struct job job = {lambda, cdata, {0, tasks}, 0};
  if (tasks <= 1) return lambda(0, &job.env, cdata);
  GOMP_parallel(run_tasks, &job, (unsigned)tasks, 0);
  return job.failed ? -1 : 0;
}

#ifdef __cplusplus
}
#endif
