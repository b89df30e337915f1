/* A minimal virtio-mmio (version 2) driver for the test guests; see virtio.h. */
#include "virtio.h"

#define QUEUE_POOL 4

static struct virtq queue_pool[QUEUE_POOL] __attribute__((aligned(4096)));
static int queues_used;
static struct virtio_dev *by_slot[VIRTIO_MMIO_SLOTS];
volatile uint32_t virtio_interrupts;
volatile uint32_t virtio_config_changes;

static void on_virtio_irq(int vector)
{
    int slot = vector - VIRTIO_VECTOR_BASE;
    struct virtio_dev *d = slot >= 0 && slot < VIRTIO_MMIO_SLOTS ? by_slot[slot] : 0;
    virtio_interrupts++;
    if (!d)
        return;
    uint32_t status = virtio_read(d, VIRTIO_MMIO_INTERRUPT_STATUS);
    if (status & 2)
        virtio_config_changes++;
    virtio_write(d, VIRTIO_MMIO_INTERRUPT_ACK, status);
}

int virtio_find(uint32_t device_id, struct virtio_dev *dev)
{
    for (int slot = 0; slot < VIRTIO_MMIO_SLOTS; slot++) {
        uintptr_t base = VIRTIO_MMIO_BASE + (uintptr_t)slot * VIRTIO_MMIO_SIZE;
        if (mmio_read32(base + VIRTIO_MMIO_MAGIC_VALUE) != VIRTIO_MAGIC)
            continue;
        if (mmio_read32(base + VIRTIO_MMIO_VERSION) != 2)
            continue;
        if (mmio_read32(base + VIRTIO_MMIO_DEVICE_ID) != device_id)
            continue;
        *dev = (struct virtio_dev){.base = base, .slot = slot, .device_id = device_id};
        return slot;
    }
    return -1;
}

void virtio_reset(struct virtio_dev *dev)
{
    virtio_write(dev, VIRTIO_MMIO_STATUS, 0);
    /* a reset completes when status reads back 0 (4.2.3.1) */
    while (virtio_read(dev, VIRTIO_MMIO_STATUS) != 0)
        ;
}

uint64_t virtio_device_features(struct virtio_dev *dev)
{
    virtio_write(dev, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    uint64_t lo = virtio_read(dev, VIRTIO_MMIO_DEVICE_FEATURES);
    virtio_write(dev, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    uint64_t hi = virtio_read(dev, VIRTIO_MMIO_DEVICE_FEATURES);
    return lo | (hi << 32);
}

static void write64(struct virtio_dev *dev, uint32_t low_reg, uint64_t value)
{
    virtio_write(dev, low_reg, (uint32_t)value);
    virtio_write(dev, low_reg + 4, (uint32_t)(value >> 32));
}

static int setup_queue(struct virtio_dev *dev, int index)
{
    struct virtq *q = dev->vq[index];
    if (!q) {
        if (queues_used == QUEUE_POOL)
            return -1;
        q = dev->vq[index] = &queue_pool[queues_used++];
    }
    memset(q, 0, sizeof(*q));
    virtio_write(dev, VIRTIO_MMIO_QUEUE_SEL, (uint32_t)index);
    if (virtio_read(dev, VIRTIO_MMIO_QUEUE_READY) != 0)
        return -2;
    if (virtio_read(dev, VIRTIO_MMIO_QUEUE_NUM_MAX) < VQ_SIZE)
        return -3;
    virtio_write(dev, VIRTIO_MMIO_QUEUE_NUM, VQ_SIZE);
    write64(dev, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint64_t)(uintptr_t)q->desc);
    write64(dev, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint64_t)(uintptr_t)&q->avail);
    write64(dev, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint64_t)(uintptr_t)&q->used);
    virtio_write(dev, VIRTIO_MMIO_QUEUE_READY, 1);
    return 0;
}

int virtio_init(struct virtio_dev *dev, uint64_t wanted, int nqueues)
{
    if (nqueues > VQ_MAX)
        return -1;
    virtio_reset(dev);
    virtio_write(dev, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
    virtio_write(dev, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    uint64_t offered = virtio_device_features(dev);
    if (!(offered & VIRTIO_F_VERSION_1))
        return -2;
    dev->features = offered & (wanted | VIRTIO_F_VERSION_1);
    virtio_write(dev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    virtio_write(dev, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)dev->features);
    virtio_write(dev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    virtio_write(dev, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(dev->features >> 32));
    uint32_t status = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK;
    virtio_write(dev, VIRTIO_MMIO_STATUS, status);
    if (!(virtio_read(dev, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK))
        return -3;
    dev->nqueues = nqueues;
    for (int i = 0; i < nqueues; i++)
        if (setup_queue(dev, i) < 0)
            return -4;
    by_slot[dev->slot] = dev;
    irq_set_handler(VIRTIO_VECTOR_BASE + dev->slot, on_virtio_irq);
    ioapic_route(VIRTIO_GSI_BASE + dev->slot, VIRTIO_VECTOR_BASE + dev->slot);
    virtio_write(dev, VIRTIO_MMIO_STATUS, status | VIRTIO_STATUS_DRIVER_OK);
    return 0;
}

void virtq_publish(struct virtq *q, uint16_t head)
{
    q->avail.ring[q->avail.idx % VQ_SIZE] = head;
    barrier(); /* x86 keeps stores in order; the compiler must too: the ring entry before the index */
    q->avail.idx++;
    barrier();
}

void virtq_add_chain(struct virtq *q, uint16_t first, const struct vbuf *bufs, int n)
{
    for (int i = 0; i < n; i++) {
        uint16_t d = (uint16_t)((first + i) % VQ_SIZE);
        q->desc[d].addr = bufs[i].addr;
        q->desc[d].len = bufs[i].len;
        q->desc[d].flags = (uint16_t)((bufs[i].device_writes ? VRING_DESC_F_WRITE : 0) |
                                      (i + 1 < n ? VRING_DESC_F_NEXT : 0));
        q->desc[d].next = (uint16_t)((d + 1) % VQ_SIZE);
    }
    virtq_publish(q, first);
}

void virtq_notify(struct virtio_dev *dev, int queue) { virtio_write(dev, VIRTIO_MMIO_QUEUE_NOTIFY, (uint32_t)queue); }

int virtq_wait(struct virtio_dev *dev, int queue, uint64_t timeout_ns, uint32_t *len)
{
    struct virtq *q = dev->vq[queue];
    volatile struct vring_used *used = &q->used;
    watchdog_arm(timeout_ns);
    cli();
    while (used->idx == q->last_used) {
        if (virtio_read(dev, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET) {
            watchdog_disarm();
            return VQ_NEEDS_RESET;
        }
        if (watchdog_fired)
            return VQ_TIMEOUT;
        sti_hlt();
    }
    watchdog_disarm();
    barrier();
    struct vring_used_elem e = used->ring[q->last_used % VQ_SIZE];
    q->last_used++;
    if (len)
        *len = e.len;
    return (int)e.id;
}
