/* The loopback carrier: two tfos_nic in one process wired to each other, for tests. A write is
 * a key- and bounds-checked memcpy into the peer's region plus a completion queued at each end
 * (condition variables wake a blocked poll). Faults can be injected into what one end's writes
 * deliver to its peer, so the engine's answers to a lost credit, a bad key, an immediate out of
 * sequence or a dead peer can be tested without a second process. */
#ifndef TFOS_LOOPBACK_H
#define TFOS_LOOPBACK_H

#include <stdint.h>

#include "nic.h"

int tfos_loopback_pair(tfos_nic **a, tfos_nic **b, char *err);
int tfos_is_loopback(const tfos_nic *nic);

/* Faults on the writes nic makes (what its peer sees): */
/* the next count immediates with (imm & mask) == value are lost (their bytes still land) */
void tfos_loopback_drop(tfos_nic *nic, uint32_t mask, uint32_t value, int count);
/* the next count writes name a wrong key (they fail with TFOS_NIC_EACCESS) */
void tfos_loopback_corrupt_keys(tfos_nic *nic, int count);
/* the next count immediates are held back and delivered after the one that follows each */
void tfos_loopback_reorder(tfos_nic *nic, int count);
/* both ends die at once: every call on either returns TFOS_NIC_ECLOSED (polls first return
 * what was already queued) */
void tfos_loopback_kill(tfos_nic *nic);

#endif
