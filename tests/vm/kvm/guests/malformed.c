/* malformed: hand virtio-blk broken descriptor chains (outside RAM, straddling its end, a loop, a next index out
   of range, a short header, an indirect table outside RAM) as writes to sector 1; print what came back for each;
   reset the device when it asks; finish with a good read and a good write to sector 2. */
#include "virtio.h"

#define VIRTIO_F_INDIRECT_DESC (1ull << 28)
#define VRING_DESC_F_INDIRECT 4
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define SECTOR 512
#define TIMEOUT_NS 2000000000ull
#define OUTSIDE_RAM 0x80000000ull /* below the MMIO hole, far above any RAM the test gives */

#ifndef RAM_SIZE
#define RAM_SIZE (16 << 20)
#endif

struct blk_req {
    uint32_t type, reserved;
    uint64_t sector;
};

static struct virtio_dev blk;
static struct blk_req req;
static uint8_t data[SECTOR] __attribute__((aligned(512)));
static volatile uint8_t status;
static int failures;

static void set_desc(int i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
    struct vring_desc *d = &blk.vq[0]->desc[i];
    d->addr = addr;
    d->len = len;
    d->flags = flags;
    d->next = next;
}

/* a well-formed write chain at descriptors 0, 1, 2 that each case then breaks */
static void good_chain(uint32_t type, uint64_t sector)
{
    req = (struct blk_req){type, 0, sector};
    status = 0xff;
    set_desc(0, (uintptr_t)&req, sizeof(req), VRING_DESC_F_NEXT, 1);
    set_desc(1, (uintptr_t)data, SECTOR, VRING_DESC_F_NEXT | (type == VIRTIO_BLK_T_IN ? VRING_DESC_F_WRITE : 0), 2);
    set_desc(2, (uintptr_t)&status, 1, VRING_DESC_F_WRITE, 0);
}

static int reinit(void)
{
    int err = virtio_init(&blk, VIRTIO_F_INDIRECT_DESC, 1);
    if (err) {
        puts("virtio init failed at step ");
        put_dec((uint64_t)-err);
        puts("\n");
    }
    return err;
}

/* Submit the chain at descriptor 0 and print "case=NAME result=...": used (with the status byte), needs_reset
   (then the device is reset and set up again), or timeout. Returns the status byte, -1 or -2. */
static int submit(const char *name)
{
    virtq_publish(blk.vq[0], 0);
    virtq_notify(&blk, 0);
    uint32_t len = 0;
    int id = virtq_wait(&blk, 0, TIMEOUT_NS, &len);
    puts("case=");
    puts(name);
    if (id == VQ_NEEDS_RESET) {
        puts(" result=needs_reset\n");
        if (reinit())
            exit(1);
        return -2;
    }
    if (id == VQ_TIMEOUT) {
        puts(" result=timeout\n");
        failures++;
        return -1;
    }
    puts(" result=used id=");
    put_dec((uint64_t)id);
    puts(" len=");
    put_dec(len);
    puts(" status=");
    put_dec(status);
    puts("\n");
    return status;
}

int main(void)
{
    idt_init();
    if (virtio_find(VIRTIO_ID_BLOCK, &blk) < 0) {
        puts("no virtio-blk device\n");
        return 1;
    }
    if (reinit())
        return 1;
    memset(data, 0xbd, SECTOR);

    good_chain(VIRTIO_BLK_T_OUT, 1);
    set_desc(1, OUTSIDE_RAM, SECTOR, VRING_DESC_F_NEXT, 2);
    submit("data-outside-ram");

    good_chain(VIRTIO_BLK_T_OUT, 1);
    set_desc(1, RAM_SIZE - SECTOR / 2, SECTOR, VRING_DESC_F_NEXT, 2);
    submit("data-straddles-ram-end");

    good_chain(VIRTIO_BLK_T_OUT, 1);
    set_desc(1, 0xfffffffffffff000ull, SECTOR, VRING_DESC_F_NEXT, 2);
    submit("data-address-wraps");

    good_chain(VIRTIO_BLK_T_IN, 1);
    set_desc(2, OUTSIDE_RAM, 1, VRING_DESC_F_WRITE, 0);
    submit("status-outside-ram");

    good_chain(VIRTIO_BLK_T_OUT, 1);
    set_desc(2, (uintptr_t)&status, 1, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 0);
    submit("loop");

    good_chain(VIRTIO_BLK_T_OUT, 1);
    set_desc(0, (uintptr_t)&req, sizeof(req), VRING_DESC_F_NEXT, 200);
    submit("next-out-of-range");

    good_chain(VIRTIO_BLK_T_OUT, 1);
    set_desc(0, (uintptr_t)&req, 4, VRING_DESC_F_NEXT, 1);
    submit("short-header");

    good_chain(VIRTIO_BLK_T_OUT, 1);
    set_desc(1, (uintptr_t)data, 0xfffffe00u, VRING_DESC_F_NEXT, 2);
    submit("huge-length");

    if (blk.features & VIRTIO_F_INDIRECT_DESC) {
        good_chain(VIRTIO_BLK_T_OUT, 1);
        set_desc(0, OUTSIDE_RAM, 3 * 16, VRING_DESC_F_INDIRECT, 0);
        submit("indirect-outside-ram");
    } else {
        puts("case=indirect-outside-ram result=skipped (no VIRTIO_F_INDIRECT_DESC)\n");
    }

    /* the device must still work: read sector 0, write sector 2 */
    good_chain(VIRTIO_BLK_T_IN, 0);
    int read_ok = submit("good-read") == 0;
    puts("sector0=");
    put_bytes_hex(data, 16);
    puts("\n");
    for (int i = 0; i < SECTOR; i++)
        data[i] = (uint8_t)(0xa5 ^ i);
    good_chain(VIRTIO_BLK_T_OUT, 2);
    int write_ok = submit("good-write") == 0;
    puts("survived failures=");
    put_dec((uint64_t)failures);
    puts("\n");
    return read_ok && write_ok ? 0 : 1;
}
