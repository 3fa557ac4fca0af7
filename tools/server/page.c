/* The chat page served at /: tools/server/page/index.html, embedded in the
 * binary at build time (cmake/embed_file.cmake), so the server needs no files
 * beside it and the page loads nothing from anywhere else. */
#include "server.h"

extern const unsigned char kvrt_server_page[];
extern const size_t kvrt_server_page_len;

const unsigned char *srv_page_data(size_t *len)
{
    *len = kvrt_server_page_len;
    return kvrt_server_page;
}
