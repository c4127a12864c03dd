// An OpenCL library that records ILGPU's kernel launches for Oclgrind (tools/opencl/oclgrind-check.sh).
//
// Built as libOpenCL.so and put first on LD_LIBRARY_PATH, it is what ILGPU opens; every function it
// does not define resolves to the real ICD loader (libOpenCL.so.1, a DT_NEEDED dependency), so the
// tests run on PoCL as always. At each kernel launch it reads every buffer argument back and writes a
// self-contained Oclgrind simulation: CAPTURE_DIR/NNNN.sim (the launch shape and every argument's
// bytes) beside the kernel's source, rewritten for Oclgrind (rewrite() below).
//
// Oclgrind has no generic address space (it is OpenCL 1.2), and ILGPU's OpenCL C types every pointer
// into a view as `typedef __generic T* type_N;` while its shared-memory pointers are already `local`.
// Those generic pointers only ever hold a `global` kernel argument plus an offset, so the rewrite
// gives those typedefs the `global` space (and spells `work_group_barrier` as 1.2's `barrier`, the same
// function). Two things keep it honest:
//  - Oclgrind compiles the rewritten source as OpenCL C 1.2, where assigning a local pointer to a
//    global one is a compile error: a generic pointer that ever held shared memory cannot get through.
//  - With CAPTURE_VERIFY=1 every captured launch first runs the rewritten kernel on PoCL on copies of
//    its buffers, then the original; every buffer must come out bit for bit the same (CAPTURE_DIR/
//    verify.log: one OK or MISMATCH line per launch).
//
// Which launches: per kernel (by its name, across the contexts the tests create), launches that differ
// in shape or scalar arguments, the first CAPTURE_PER_KERNEL (default 4) of them, and none whose buffers exceed CAPTURE_MAX_BYTES (default 512 KB) or
// whose work-items exceed CAPTURE_MAX_ITEMS (default 65536): Oclgrind interprets every instruction.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int32_t cl_int;
typedef uint32_t cl_uint;
typedef uint64_t cl_mem_flags;
typedef void *cl_context, *cl_device_id, *cl_program, *cl_kernel, *cl_mem, *cl_command_queue, *cl_event;

#define CL_SUCCESS 0
#define CL_TRUE 1
#define CL_MEM_READ_WRITE 1
#define CL_MEM_COPY_HOST_PTR 32
#define CL_PROGRAM_BUILD_LOG 0x1183

#define MAX_ARGS 64
#define MAX_SIGNATURES 16

struct program { cl_program id; cl_context context; cl_device_id device; char *source; char *options; int file; cl_program rewritten; };
struct arg { size_t size; unsigned char *value; int set; };
struct kernel { cl_kernel id; cl_program program; char *name; char *label; struct arg args[MAX_ARGS]; int count; };
// What was captured of each kernel (by label, across the contexts and kernel objects the tests create).
struct captured { char *label; uint64_t signatures[MAX_SIGNATURES]; int count; };
struct buffer { cl_mem id; size_t size; };

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct program *programs; static int numPrograms, capPrograms;
static struct kernel *kernels; static int numKernels, capKernels;
static struct buffer *buffers; static int numBuffers, capBuffers;
static struct captured *seen; static int numSeen, capSeen;
static int launches, programFiles;

static void *real(const char *name)
{
    static void *library;
    if (!library && !(library = dlopen("libOpenCL.so.1", RTLD_NOW | RTLD_LOCAL)))
    {
        fprintf(stderr, "cl-capture: cannot open libOpenCL.so.1: %s\n", dlerror());
        abort();
    }
    void *f = dlsym(library, name);
    if (!f)
    {
        fprintf(stderr, "cl-capture: libOpenCL.so.1 has no %s\n", name);
        abort();
    }
    return f;
}
#define REAL(ret, name, ...) static ret (*real_##name)(__VA_ARGS__); if (!real_##name) real_##name = real(#name)

#define GROW(array, count, capacity) \
    if (count == capacity) { capacity = capacity ? 2 * capacity : 64; array = realloc(array, capacity * sizeof *array); }

static const char *dir(void) { return getenv("CAPTURE_DIR"); }
static long setting(const char *name, long fallback) { const char *v = getenv(name); return v && *v ? atol(v) : fallback; }

static struct program *find_program(cl_program id) { for (int i = 0; i < numPrograms; i++) if (programs[i].id == id) return &programs[i]; return NULL; }
static struct kernel *find_kernel(cl_kernel id) { for (int i = 0; i < numKernels; i++) if (kernels[i].id == id) return &kernels[i]; return NULL; }
static struct buffer *find_buffer(const void *value, size_t size)
{
    if (size != sizeof(cl_mem)) return NULL;
    cl_mem id; memcpy(&id, value, sizeof id);
    for (int i = 0; i < numBuffers; i++) if (buffers[i].id == id) return &buffers[i];
    return NULL;
}

// OpenCL counts references; ILGPU releases each object once, when it is done with it, so a release is
// taken as the end of the handle (the real object may live on; a new one may reuse the address).
static void forget_program(cl_program id)
{
    REAL(cl_int, clReleaseProgram, cl_program);
    struct program *p = find_program(id);
    if (!p) return;
    free(p->source); free(p->options);
    if (p->rewritten) real_clReleaseProgram(p->rewritten);
    *p = programs[--numPrograms];
}

static void forget_kernel(cl_kernel id)
{
    struct kernel *k = find_kernel(id);
    if (!k) return;
    for (int i = 0; i < MAX_ARGS; i++) free(k->args[i].value);
    free(k->name); free(k->label);
    *k = kernels[--numKernels];
}

/// ILGPU's OpenCL C with every pointer in a concrete address space (see the top of this file).
static char *rewrite(const char *source)
{
    static const char *from[] = { "typedef __generic ", "work_group_barrier" };
    static const char *to[] = { "typedef global ", "barrier" };
    char *text = strdup(source);
    for (int r = 0; r < 2; r++)
    {
        size_t fromLength = strlen(from[r]), toLength = strlen(to[r]), n = 0;
        for (const char *p = text; (p = strstr(p, from[r])); p += fromLength) n++;
        char *out = malloc(strlen(text) + n * toLength + 1), *o = out;
        for (const char *p = text, *q; ; p = q + fromLength)
        {
            q = strstr(p, from[r]);
            size_t keep = q ? (size_t)(q - p) : strlen(p);
            memcpy(o, p, keep); o += keep;
            if (!q) break;
            memcpy(o, to[r], toLength); o += toLength;
        }
        *o = 0;
        free(text);
        text = out;
    }
    return text;
}

cl_program clCreateProgramWithSource(cl_context context, cl_uint count, const char **strings, const size_t *lengths, cl_int *error)
{
    REAL(cl_program, clCreateProgramWithSource, cl_context, cl_uint, const char **, const size_t *, cl_int *);
    cl_program id = real_clCreateProgramWithSource(context, count, strings, lengths, error);
    if (!id) return id;
    size_t total = 0;
    for (cl_uint i = 0; i < count; i++) total += lengths && lengths[i] ? lengths[i] : strlen(strings[i]);
    char *source = malloc(total + 1), *s = source;
    for (cl_uint i = 0; i < count; i++)
    {
        size_t n = lengths && lengths[i] ? lengths[i] : strlen(strings[i]);
        memcpy(s, strings[i], n); s += n;
    }
    *s = 0;
    pthread_mutex_lock(&lock);
    forget_program(id);  // a released program's handle may come back for a new one
    GROW(programs, numPrograms, capPrograms);
    programs[numPrograms++] = (struct program){ .id = id, .context = context, .source = source, .file = -1 };
    pthread_mutex_unlock(&lock);
    return id;
}

cl_int clReleaseProgram(cl_program id)
{
    REAL(cl_int, clReleaseProgram, cl_program);
    pthread_mutex_lock(&lock);
    forget_program(id);
    pthread_mutex_unlock(&lock);
    return real_clReleaseProgram(id);
}

cl_int clBuildProgram(cl_program id, cl_uint numDevices, const cl_device_id *devices, const char *options, void (*notify)(cl_program, void *), void *data)
{
    REAL(cl_int, clBuildProgram, cl_program, cl_uint, const cl_device_id *, const char *, void (*)(cl_program, void *), void *);
    pthread_mutex_lock(&lock);
    struct program *p = find_program(id);
    if (p)
    {
        free(p->options);
        p->options = strdup(options ? options : "");
        p->device = numDevices > 0 ? devices[0] : NULL;
    }
    pthread_mutex_unlock(&lock);
    return real_clBuildProgram(id, numDevices, devices, options, notify, data);
}

/// The kernel's name as IlgpuBert reports it: the source's first line, written by the KernelSet's
/// loader (kernels/IlgpuBert.Kernels/KernelLoading.cs), or the OpenCL name where there is none.
static char *label(cl_program program, const char *name)
{
    static const char prefix[] = "// IlgpuBert kernel: ";
    struct program *p = find_program(program);
    if (!p || strncmp(p->source, prefix, sizeof prefix - 1)) return strdup(name);
    const char *start = p->source + sizeof prefix - 1;
    return strndup(start, strcspn(start, "\r\n"));
}

cl_kernel clCreateKernel(cl_program program, const char *name, cl_int *error)
{
    REAL(cl_kernel, clCreateKernel, cl_program, const char *, cl_int *);
    cl_kernel id = real_clCreateKernel(program, name, error);
    if (!id) return id;
    pthread_mutex_lock(&lock);
    forget_kernel(id);
    GROW(kernels, numKernels, capKernels);
    kernels[numKernels++] = (struct kernel){ .id = id, .program = program, .name = strdup(name), .label = label(program, name) };
    pthread_mutex_unlock(&lock);
    return id;
}

cl_int clReleaseKernel(cl_kernel id)
{
    REAL(cl_int, clReleaseKernel, cl_kernel);
    pthread_mutex_lock(&lock);
    forget_kernel(id);
    pthread_mutex_unlock(&lock);
    return real_clReleaseKernel(id);
}

cl_int clSetKernelArg(cl_kernel id, cl_uint index, size_t size, const void *value)
{
    REAL(cl_int, clSetKernelArg, cl_kernel, cl_uint, size_t, const void *);
    pthread_mutex_lock(&lock);
    struct kernel *k = find_kernel(id);
    if (k && index < MAX_ARGS)
    {
        struct arg *a = &k->args[index];
        free(a->value);
        a->size = size;
        a->value = value ? memcpy(malloc(size), value, size) : NULL;
        a->set = 1;
        if ((int)index >= k->count) k->count = index + 1;
    }
    pthread_mutex_unlock(&lock);
    return real_clSetKernelArg(id, index, size, value);
}

cl_mem clCreateBuffer(cl_context context, cl_mem_flags flags, size_t size, void *host, cl_int *error)
{
    REAL(cl_mem, clCreateBuffer, cl_context, cl_mem_flags, size_t, void *, cl_int *);
    cl_mem id = real_clCreateBuffer(context, flags, size, host, error);
    if (!id) return id;
    pthread_mutex_lock(&lock);
    GROW(buffers, numBuffers, capBuffers);
    buffers[numBuffers++] = (struct buffer){ id, size };
    pthread_mutex_unlock(&lock);
    return id;
}

cl_int clReleaseMemObject(cl_mem id)
{
    REAL(cl_int, clReleaseMemObject, cl_mem);
    pthread_mutex_lock(&lock);
    for (int i = 0; i < numBuffers; i++)
        if (buffers[i].id == id) { buffers[i] = buffers[--numBuffers]; break; }
    pthread_mutex_unlock(&lock);
    return real_clReleaseMemObject(id);
}

static uint64_t hash(uint64_t h, const void *data, size_t n)
{
    const unsigned char *b = data;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static int read_buffer(cl_command_queue queue, cl_mem id, size_t size, unsigned char *host)
{
    REAL(cl_int, clEnqueueReadBuffer, cl_command_queue, cl_mem, cl_uint, size_t, size_t, void *, cl_uint, const cl_event *, cl_event *);
    return real_clEnqueueReadBuffer(queue, id, CL_TRUE, 0, size, host, 0, NULL, NULL);
}

static void log_line(const char *format, const char *name, int launch, const char *detail)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/verify.log", dir());
    FILE *f = fopen(path, "a");
    if (!f) return;
    fprintf(f, format, launch, name, detail);
    fclose(f);
}

/// Runs the rewritten kernel on copies of the launch's buffers (inputs as captured) and returns the
/// copies' contents after it, or NULL with a reason in `why`.
static unsigned char **run_rewritten(struct kernel *k, struct program *p, cl_command_queue queue, cl_uint dims,
                                     const size_t *global, const size_t *local, struct buffer **mems,
                                     unsigned char **inputs, char *why, size_t whySize)
{
    REAL(cl_program, clCreateProgramWithSource, cl_context, cl_uint, const char **, const size_t *, cl_int *);
    REAL(cl_int, clBuildProgram, cl_program, cl_uint, const cl_device_id *, const char *, void (*)(cl_program, void *), void *);
    REAL(cl_int, clGetProgramBuildInfo, cl_program, cl_device_id, cl_uint, size_t, void *, size_t *);
    REAL(cl_kernel, clCreateKernel, cl_program, const char *, cl_int *);
    REAL(cl_int, clSetKernelArg, cl_kernel, cl_uint, size_t, const void *);
    REAL(cl_mem, clCreateBuffer, cl_context, cl_mem_flags, size_t, void *, cl_int *);
    REAL(cl_int, clReleaseMemObject, cl_mem);
    REAL(cl_int, clReleaseKernel, cl_kernel);
    REAL(cl_int, clEnqueueNDRangeKernel, cl_command_queue, cl_kernel, cl_uint, const size_t *, const size_t *, const size_t *, cl_uint, const cl_event *, cl_event *);
    REAL(cl_int, clFinish, cl_command_queue);
    cl_int error = 0;
    if (!p->rewritten)
    {
        char *source = rewrite(p->source);
        const char *strings[] = { source };
        p->rewritten = real_clCreateProgramWithSource(p->context, 1, strings, NULL, &error);
        free(source);
        if (!p->rewritten || real_clBuildProgram(p->rewritten, 1, &p->device, p->options, NULL, NULL) != CL_SUCCESS)
        {
            char log[2048] = "";
            if (p->rewritten) real_clGetProgramBuildInfo(p->rewritten, p->device, CL_PROGRAM_BUILD_LOG, sizeof log - 1, log, NULL);
            snprintf(why, whySize, "the rewritten source does not build: %s", log);
            return NULL;
        }
    }
    cl_kernel copy = real_clCreateKernel(p->rewritten, k->name, &error);
    if (!copy) { snprintf(why, whySize, "clCreateKernel failed (%d)", error); return NULL; }
    cl_mem copies[MAX_ARGS] = { 0 };
    for (int i = 0; i < k->count; i++)
    {
        struct arg *a = &k->args[i];
        if (!mems[i]) { real_clSetKernelArg(copy, i, a->size, a->value); continue; }
        for (int j = 0; j < i; j++)  // arguments naming one buffer share one copy
            if (mems[j] == mems[i]) copies[i] = copies[j];
        if (!copies[i])
            copies[i] = real_clCreateBuffer(p->context, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, mems[i]->size, inputs[i], &error);
        real_clSetKernelArg(copy, i, sizeof(cl_mem), &copies[i]);
    }
    error = real_clEnqueueNDRangeKernel(queue, copy, dims, NULL, global, local, 0, NULL, NULL);
    real_clFinish(queue);
    unsigned char **outputs = calloc(k->count, sizeof *outputs);
    for (int i = 0; i < k->count; i++)
        if (copies[i])
        {
            outputs[i] = malloc(mems[i]->size);
            read_buffer(queue, copies[i], mems[i]->size, outputs[i]);
        }
    for (int i = 0; i < k->count; i++)
    {
        int first = 1;
        for (int j = 0; j < i; j++) if (copies[j] == copies[i]) first = 0;
        if (copies[i] && first) real_clReleaseMemObject(copies[i]);
    }
    real_clReleaseKernel(copy);
    if (error != CL_SUCCESS) { snprintf(why, whySize, "the rewritten kernel did not launch (%d)", error); free(outputs); return NULL; }
    return outputs;
}

static void write_program(struct program *p)
{
    if (p->file >= 0) return;
    p->file = programFiles++;
    char path[4096];
    snprintf(path, sizeof path, "%s/program%03d.cl", dir(), p->file);
    FILE *f = fopen(path, "w");
    char *source = rewrite(p->source);
    if (f) { fputs(source, f); fclose(f); }
    free(source);
}

static void write_sim(struct kernel *k, struct program *p, int launch, cl_uint dims, const size_t *global, const size_t *local,
                      struct buffer **mems, unsigned char **inputs)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%04d.sim", dir(), launch);
    FILE *f = fopen(path, "w");
    if (!f) return;
    fprintf(f, "# kernel: %s (captured by tools/opencl/cl-capture.c)\nprogram%03d.cl\n%s\n", k->label, p->file, k->name);
    for (int d = 0; d < 3; d++) fprintf(f, "%zu ", d < (int)dims ? global[d] : 1);
    fprintf(f, "\n");
    for (int d = 0; d < 3; d++) fprintf(f, "%zu ", d < (int)dims ? local[d] : 1);
    fprintf(f, "\n");
    for (int i = 0; i < k->count; i++)
    {
        struct arg *a = &k->args[i];
        if (!a->value) { fprintf(f, "<size=%zu uchar>\n", a->size); continue; }  // local memory
        if (!mems[i])
        {
            int null = 1;
            if (a->size == sizeof(cl_mem)) for (size_t b = 0; b < a->size; b++) null &= a->value[b] == 0;
            else null = 0;
            // A null cl_mem and a private value are both written as bytes: Oclgrind reads a null
            // buffer as size 0, which only `null` expresses.
            fprintf(f, "<size=%zu uchar hex>", a->size);
            for (size_t b = 0; b < a->size; b++) fprintf(f, " %02x", a->value[b]);
            fprintf(f, "%s\n", null ? "  # a null pointer or a zero scalar" : "");
            continue;
        }
        size_t size = mems[i]->size;
        int words = size % 4 == 0;
        fprintf(f, "<size=%zu %s hex>", size, words ? "uint" : "uchar");
        for (size_t b = 0; b < size; b += words ? 4 : 1)
        {
            if (b % 64 == 0) fprintf(f, "\n");
            if (words) { uint32_t w; memcpy(&w, inputs[i] + b, 4); fprintf(f, "%x ", w); }
            else fprintf(f, "%x ", inputs[i][b]);
        }
        fprintf(f, "\n");
    }
    fclose(f);
}

cl_int clEnqueueNDRangeKernel(cl_command_queue queue, cl_kernel id, cl_uint dims, const size_t *offset, const size_t *global,
                              const size_t *local, cl_uint numEvents, const cl_event *events, cl_event *event)
{
    REAL(cl_int, clEnqueueNDRangeKernel, cl_command_queue, cl_kernel, cl_uint, const size_t *, const size_t *, const size_t *, cl_uint, const cl_event *, cl_event *);
    REAL(cl_int, clFinish, cl_command_queue);
    if (!dir() || !local || offset)
        return real_clEnqueueNDRangeKernel(queue, id, dims, offset, global, local, numEvents, events, event);
    pthread_mutex_lock(&lock);
    struct kernel *k = find_kernel(id);
    struct program *p = k ? find_program(k->program) : NULL;
    struct buffer *mems[MAX_ARGS] = { 0 };
    size_t bytes = 0, items = 1;
    uint64_t signature = 14695981039346656037ull;
    if (p)
    {
        for (cl_uint d = 0; d < dims; d++) items *= global[d];
        signature = hash(signature, global, dims * sizeof *global);
        signature = hash(signature, local, dims * sizeof *local);
        for (int i = 0; i < k->count; i++)
        {
            struct arg *a = &k->args[i];
            mems[i] = a->value ? find_buffer(a->value, a->size) : NULL;
            if (mems[i]) { bytes += mems[i]->size; signature = hash(signature, &mems[i]->size, sizeof(size_t)); }
            else signature = hash(signature, a->value ? (void *)a->value : (void *)&a->size, a->value ? a->size : sizeof a->size);
        }
    }
    struct captured *c = NULL;
    for (int i = 0; p && i < numSeen && !c; i++) if (!strcmp(seen[i].label, k->label)) c = &seen[i];
    if (p && !c)
    {
        GROW(seen, numSeen, capSeen);
        c = &seen[numSeen++];
        *c = (struct captured){ .label = strdup(k->label) };
    }
    int wanted = p && c->count < setting("CAPTURE_PER_KERNEL", 4) && c->count < MAX_SIGNATURES
        && bytes <= (size_t)setting("CAPTURE_MAX_BYTES", 512 << 10) && items <= (size_t)setting("CAPTURE_MAX_ITEMS", 65536);
    for (int s = 0; wanted && s < c->count; s++) if (c->signatures[s] == signature) wanted = 0;
    if (!wanted)
    {
        pthread_mutex_unlock(&lock);
        return real_clEnqueueNDRangeKernel(queue, id, dims, offset, global, local, numEvents, events, event);
    }
    c->signatures[c->count++] = signature;
    int launch = launches++;
    real_clFinish(queue);  // the queue is in order: finishing it makes every buffer what this launch sees
    unsigned char *inputs[MAX_ARGS] = { 0 };
    for (int i = 0; i < k->count; i++)
        if (mems[i])
        {
            inputs[i] = malloc(mems[i]->size);
            read_buffer(queue, mems[i]->id, mems[i]->size, inputs[i]);
        }
    write_program(p);
    write_sim(k, p, launch, dims, global, local, mems, inputs);
    unsigned char **rewritten = NULL;
    char why[4096] = "";
    if (setting("CAPTURE_VERIFY", 0))
        rewritten = run_rewritten(k, p, queue, dims, global, local, mems, inputs, why, sizeof why);
    cl_int result = real_clEnqueueNDRangeKernel(queue, id, dims, offset, global, local, numEvents, events, event);
    if (setting("CAPTURE_VERIFY", 0))
    {
        real_clFinish(queue);
        for (int i = 0; rewritten && i < k->count && !why[0]; i++)
        {
            if (!mems[i]) continue;
            unsigned char *original = malloc(mems[i]->size);
            read_buffer(queue, mems[i]->id, mems[i]->size, original);
            for (size_t b = 0; b < mems[i]->size; b++)
                if (original[b] != rewritten[i][b])
                {
                    snprintf(why, sizeof why, "argument %d differs from byte %zu on", i, b);
                    break;
                }
            free(original);
        }
        log_line(why[0] ? "MISMATCH %04d %s: %s\n" : "OK %04d %s%s\n", k->label, launch, why);
    }
    for (int i = 0; i < k->count; i++) { free(inputs[i]); if (rewritten) free(rewritten[i]); }
    free(rewritten);
    pthread_mutex_unlock(&lock);
    return result;
}
