/* virtio_blk: read sector 0 and print it, write sector 1, flush, read it back; each step's status printed. */
#include "virtio.h"

#define VIRTIO_BLK_F_RO (1ull << 5)
#define VIRTIO_BLK_F_FLUSH (1ull << 9)
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define SECTOR 512
#define TIMEOUT_NS 5000000000ull
#define WRITE_SECTOR 1

struct blk_req {
    uint32_t type, reserved;
    uint64_t sector;
};

static struct virtio_dev blk;
static struct blk_req req;
static uint8_t data[SECTOR] __attribute__((aligned(512)));
static volatile uint8_t status;

/* One request: header, optional data, status byte. Returns the status byte, or 0x100 + wait error. */
static int request(uint32_t type, uint64_t sector, bool with_data)
{
    req = (struct blk_req){type, 0, sector};
    status = 0xff;
    struct vbuf bufs[3] = {{(uintptr_t)&req, sizeof(req), false},
                           {(uintptr_t)data, SECTOR, type == VIRTIO_BLK_T_IN},
                           {(uintptr_t)&status, 1, true}};
    if (with_data) {
        virtq_add_chain(blk.vq[0], 0, bufs, 3);
    } else {
        bufs[1] = bufs[2];
        virtq_add_chain(blk.vq[0], 0, bufs, 2);
    }
    virtq_notify(&blk, 0);
    uint32_t len = 0;
    int id = virtq_wait(&blk, 0, TIMEOUT_NS, &len);
    if (id < 0)
        return 0x100 - id;
    return status;
}

static void report(const char *what, int result)
{
    puts(what);
    puts(" status=");
    put_dec((uint64_t)result);
    puts("\n");
}

int main(void)
{
    idt_init();
    if (virtio_find(VIRTIO_ID_BLOCK, &blk) < 0) {
        puts("no virtio-blk device\n");
        return 1;
    }
    int err = virtio_init(&blk, VIRTIO_BLK_F_RO | VIRTIO_BLK_F_FLUSH, 1);
    if (err) {
        puts("virtio init failed at step ");
        put_dec((uint64_t)-err);
        puts("\n");
        return 1;
    }
    uint64_t capacity = (uint64_t)virtio_read(&blk, VIRTIO_MMIO_CONFIG) |
                        (uint64_t)virtio_read(&blk, VIRTIO_MMIO_CONFIG + 4) << 32;
    puts("blk slot=");
    put_dec((uint64_t)blk.slot);
    puts(" capacity=");
    put_dec(capacity);
    puts(" ro=");
    put_dec((blk.features & VIRTIO_BLK_F_RO) != 0);
    puts(" flush=");
    put_dec((blk.features & VIRTIO_BLK_F_FLUSH) != 0);
    puts("\n");

    report("read0", request(VIRTIO_BLK_T_IN, 0, true));
    puts("sector0=");
    put_bytes_hex(data, SECTOR);
    puts("\n");

    for (int i = 0; i < SECTOR; i++)
        data[i] = (uint8_t)(i * 7 + 3);
    memcpy(data, "written by the virtkit guest", 28);
    report("write1", request(VIRTIO_BLK_T_OUT, WRITE_SECTOR, true));
    if (blk.features & VIRTIO_BLK_F_FLUSH)
        report("flush", request(VIRTIO_BLK_T_FLUSH, 0, false));

    memset(data, 0, SECTOR);
    report("read1", request(VIRTIO_BLK_T_IN, WRITE_SECTOR, true));
    puts("sector1=");
    put_bytes_hex(data, 32);
    puts("\n");
    puts("interrupts=");
    put_dec(virtio_interrupts);
    puts("\n");
    return 0;
}
