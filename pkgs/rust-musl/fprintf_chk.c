/* Debian builds libunwind with _FORTIFY_SOURCE, so its debug logging calls
 * glibc's __fprintf_chk, which musl does not have. The flag argument only
 * selects extra glibc checks; forwarding to vfprintf keeps the behaviour. */
#include <stdarg.h>
#include <stdio.h>

int __fprintf_chk(FILE *stream, int flag, const char *format, ...)
{
    va_list ap;
    int n;

    (void)flag;
    va_start(ap, format);
    n = vfprintf(stream, format, ap);
    va_end(ap);
    return n;
}
