/* virtio_net: send one Ethernet frame (ethertype 0x88b5) out, then print the payload of the first 0x88b5 frame
   that comes in; other frames (the host's own chatter) are counted and given back to the device. */
#include "virtio.h"

#define VIRTIO_NET_F_MAC (1ull << 5)
#define RXQ 0
#define TXQ 1
#define RX_BUFFERS 4
#define BUF_SIZE 2048
#define NET_HDR 12 /* virtio_net_hdr with VERSION_1: num_buffers included */
#define ETHERTYPE_TEST 0x88b5
#define TIMEOUT_NS 10000000000ull

static struct virtio_dev net;
static uint8_t rx_buf[RX_BUFFERS][BUF_SIZE] __attribute__((aligned(64)));
static uint8_t tx_hdr[NET_HDR];
static uint8_t tx_frame[64];
static uint8_t mac[6] = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};

static void post_rx(uint16_t id)
{
    struct vbuf b = {(uintptr_t)rx_buf[id], BUF_SIZE, true};
    virtq_add_chain(net.vq[RXQ], id, &b, 1);
}

static int send_frame(void)
{
    static const char payload[] = "virtkit-guest-tx";
    memset(tx_frame, 0, sizeof(tx_frame));
    memset(tx_frame, 0xff, 6);
    memcpy(tx_frame + 6, mac, 6);
    tx_frame[12] = ETHERTYPE_TEST >> 8;
    tx_frame[13] = ETHERTYPE_TEST & 0xff;
    memcpy(tx_frame + 14, payload, sizeof(payload));
    struct vbuf bufs[2] = {{(uintptr_t)tx_hdr, NET_HDR, false}, {(uintptr_t)tx_frame, sizeof(tx_frame), false}};
    virtq_add_chain(net.vq[TXQ], 0, bufs, 2);
    virtq_notify(&net, TXQ);
    return virtq_wait(&net, TXQ, TIMEOUT_NS, 0);
}

static void print_mac(const uint8_t *m)
{
    for (int i = 0; i < 6; i++) {
        if (i)
            putc(':');
        put_hex(m[i], 2);
    }
}

int main(void)
{
    idt_init();
    if (virtio_find(VIRTIO_ID_NET, &net) < 0) {
        puts("no virtio-net device\n");
        return 1;
    }
    int err = virtio_init(&net, VIRTIO_NET_F_MAC, 2);
    if (err) {
        puts("virtio init failed at step ");
        put_dec((uint64_t)-err);
        puts("\n");
        return 1;
    }
    if (net.features & VIRTIO_NET_F_MAC)
        for (int i = 0; i < 6; i++)
            mac[i] = *(volatile uint8_t *)(net.base + VIRTIO_MMIO_CONFIG + i);
    puts("net slot=");
    put_dec((uint64_t)net.slot);
    puts(" mac=");
    print_mac(mac);
    puts("\n");

    for (uint16_t i = 0; i < RX_BUFFERS; i++)
        post_rx(i);
    virtq_notify(&net, RXQ);

    int sent = send_frame();
    puts(sent >= 0 ? "tx done\n" : "tx failed\n");
    if (sent < 0)
        return 1;

    int ignored = 0;
    for (;;) {
        uint32_t len = 0;
        int id = virtq_wait(&net, RXQ, TIMEOUT_NS, &len);
        if (id < 0 || id >= RX_BUFFERS) {
            puts("rx failed: no frame\n");
            return 1;
        }
        const uint8_t *frame = rx_buf[id] + NET_HDR;
        int type = frame[12] << 8 | frame[13];
        if (len < NET_HDR + 14 || type != ETHERTYPE_TEST) {
            ignored++;
            post_rx((uint16_t)id);
            virtq_notify(&net, RXQ);
            continue;
        }
        puts("rx len=");
        put_dec(len - NET_HDR);
        puts(" src=");
        print_mac(frame + 6);
        puts(" ignored=");
        put_dec((uint64_t)ignored);
        puts(" payload=");
        for (uint32_t i = 14; i < len - NET_HDR && frame[i] >= 0x20 && frame[i] < 0x7f; i++)
            putc((char)frame[i]);
        puts("\n");
        return 0;
    }
}
