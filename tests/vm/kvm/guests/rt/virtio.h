/* A minimal virtio-mmio (version 2) driver: probe, feature negotiation, split virtqueues, interrupt-driven waits. */
#ifndef VIRTKIT_GUEST_VIRTIO_H
#define VIRTKIT_GUEST_VIRTIO_H

#include "rt.h"

#define VIRTIO_MMIO_BASE 0xd0000000UL
#define VIRTIO_MMIO_SIZE 0x1000
#define VIRTIO_MMIO_SLOTS 8
#define VIRTIO_GSI_BASE 5
#define VIRTIO_VECTOR_BASE 0x60

/* register offsets (virtio 1.x, 4.2.2) */
#define VIRTIO_MMIO_MAGIC_VALUE 0x000
#define VIRTIO_MMIO_VERSION 0x004
#define VIRTIO_MMIO_DEVICE_ID 0x008
#define VIRTIO_MMIO_DEVICE_FEATURES 0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES 0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL 0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_MMIO_QUEUE_NUM 0x038
#define VIRTIO_MMIO_QUEUE_READY 0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY 0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS 0x060
#define VIRTIO_MMIO_INTERRUPT_ACK 0x064
#define VIRTIO_MMIO_STATUS 0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW 0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH 0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW 0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH 0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW 0x0a0
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH 0x0a4
#define VIRTIO_MMIO_CONFIG 0x100

#define VIRTIO_MAGIC 0x74726976 /* "virt" */
#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLOCK 2

#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED 0x80

#define VIRTIO_F_VERSION_1 (1ull << 32)

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2

#define VQ_SIZE 8
#define VQ_MAX 2

struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct vring_avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[VQ_SIZE];
    uint16_t used_event;
};

struct vring_used_elem {
    uint32_t id;
    uint32_t len;
};

struct vring_used {
    uint16_t flags;
    uint16_t idx;
    struct vring_used_elem ring[VQ_SIZE];
    uint16_t avail_event;
};

struct virtq {
    struct vring_desc desc[VQ_SIZE] __attribute__((aligned(16)));
    struct vring_avail avail __attribute__((aligned(2)));
    struct vring_used used __attribute__((aligned(4096)));
    uint16_t last_used;
};

struct virtio_dev {
    uintptr_t base;
    int slot;           /* window index: base = VIRTIO_MMIO_BASE + slot * VIRTIO_MMIO_SIZE, GSI = 5 + slot */
    uint32_t device_id;
    uint64_t features;  /* negotiated */
    int nqueues;
    struct virtq *vq[VQ_MAX];
};

/* A buffer of a descriptor chain: guest-physical address, length, whether the device writes it. */
struct vbuf {
    uint64_t addr;
    uint32_t len;
    bool device_writes;
};

/* wait results besides a used-ring id */
#define VQ_TIMEOUT (-1)
#define VQ_NEEDS_RESET (-2)

static inline uint32_t virtio_read(const struct virtio_dev *d, uint32_t reg) { return mmio_read32(d->base + reg); }
static inline void virtio_write(const struct virtio_dev *d, uint32_t reg, uint32_t v) { mmio_write32(d->base + reg, v); }

/* The first device with this ID (scanning the windows), or -1. */
int virtio_find(uint32_t device_id, struct virtio_dev *dev);
/* Reset, negotiate VERSION_1 plus `wanted` (of what the device offers), set up `nqueues` queues, DRIVER_OK;
   also routes the device's GSI to VIRTIO_VECTOR_BASE + slot. 0 on success, else a negative step number. */
int virtio_init(struct virtio_dev *dev, uint64_t wanted, int nqueues);
void virtio_reset(struct virtio_dev *dev);
uint64_t virtio_device_features(struct virtio_dev *dev);
/* Put a chain of n buffers at descriptors first..first+n-1 and make it available (no notify). */
void virtq_add_chain(struct virtq *q, uint16_t first, const struct vbuf *bufs, int n);
/* Put raw descriptors (for malformed chains) and publish head. */
void virtq_publish(struct virtq *q, uint16_t head);
void virtq_notify(struct virtio_dev *dev, int queue);
/* Halt until the queue has a used entry (returns its id, length in *len), the device wants a reset, or the
   timeout passes. */
int virtq_wait(struct virtio_dev *dev, int queue, uint64_t timeout_ns, uint32_t *len);
extern volatile uint32_t virtio_interrupts; /* interrupts taken, all devices */
extern volatile uint32_t virtio_config_changes;

#endif
