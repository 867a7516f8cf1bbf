/* device.c - the choice of compute device (see device.h). */
#include "kernels/device.h"

#include <stdio.h>
#include <string.h>

#ifdef TIDAL_HAVE_CUDA
#include "kernels/cuda/common.h"
#endif

bool device_cuda_built(void)
{
#ifdef TIDAL_HAVE_CUDA
    return true;
#else
    return false;
#endif
}

tidal_status device_cuda_available(void)
{
#ifdef TIDAL_HAVE_CUDA
    int n = 0;
    return cuda_device_count(&n);
#else
    return tidal_fail(TIDAL_ERR_UNAVAILABLE, "this build has no CUDA path (built without nvcc or with TIDAL_CUDA=OFF)");
#endif
}

tidal_status device_resolve(const char *key, const char *name, const char *on_cpu, const char *on_cuda,
                            bool *use_cuda, char *why, size_t n)
{
    *use_cuda = false;
    if (why && n) why[0] = '\0';
    if (!name || !strcmp(name, "cpu")) {
        if (why && n) snprintf(why, n, "%s cpu: %s", key, on_cpu);
        return TIDAL_OK;
    }
    const bool is_auto = !strcmp(name, "auto");
    if (!is_auto && strcmp(name, "cuda") != 0)
        return tidal_fail(TIDAL_ERR_INVALID, "%s: '%s' is not one of auto, cpu, cuda", key, name);
    if (device_cuda_available() != TIDAL_OK) {
        if (!is_auto) return tidal_wrap(TIDAL_ERR_UNAVAILABLE, "%s cuda", key);
        if (why && n) snprintf(why, n, "%s auto: %s (no CUDA: %s)", key, on_cpu, tidal_errmsg());
        tidal_clear();
        return TIDAL_OK;
    }
    *use_cuda = true;
    if (why && n) snprintf(why, n, "%s %s: %s", key, name, on_cuda);
    return TIDAL_OK;
}
