/* KV block manager (host-side bookkeeping). Include through kvrt.h. */
#ifndef KVRT_KV_H
#define KVRT_KV_H

#include "kvrt.h"

#endif /* KVRT_KV_H */
