/* The real-mode part of the test bzImage: a boot sector whose setup header follows boot.rst's field list, and
 * setup_sects = 0 ("means 4"), so the protected-mode kernel starts at (4 + 1) * 512 in the file.
 * Each field sits at its documented offset: .org fails the build if one drifts. */
    .section .setup, "a"
    .org 0x1f1
    .byte 0                     /* setup_sects: 0 means 4 */
    .word 0                     /* root_flags */
    .long _syssize              /* syssize: protected-mode kernel in 16-byte paragraphs */
    .word 0                     /* ram_size */
    .word 0xffff                /* vid_mode */
    .word 0                     /* root_dev */
    .word 0xaa55                /* boot_flag */
    .org 0x200
    .byte 0xeb, hdr_end - hdr_start     /* jump: its displacement is the header's length past 0x202 */
hdr_start:
    .ascii "HdrS"               /* header */
    .word 0x020f                /* version 2.15 */
    .long 0                     /* realmode_swtch */
    .word 0x1000                /* start_sys_seg */
    .word 0                     /* kernel_version */
    .byte 0                     /* type_of_loader */
    .byte 0x01                  /* loadflags: LOADED_HIGH */
    .word 0x8000                /* setup_move_size */
    .long 0x100000              /* code32_start */
    .long 0                     /* ramdisk_image */
    .long 0                     /* ramdisk_size */
    .long 0                     /* bootsect_kludge */
    .word 0                     /* heap_end_ptr */
    .byte 0, 0                  /* ext_loader_ver, ext_loader_type */
    .long 0                     /* cmd_line_ptr */
    .org 0x22c
    .long 0x7fffffff            /* initrd_addr_max */
    .long 0x200000              /* kernel_alignment */
    .byte 0                     /* relocatable_kernel */
    .byte 21                    /* min_alignment */
    .org 0x236
    .word 0x0001                /* xloadflags: XLF_KERNEL_64 */
    .long 2047                  /* cmdline_size */
    .long 0                     /* hardware_subarch */
    .quad 0                     /* hardware_subarch_data */
    .long 0, 0                  /* payload_offset, payload_length */
    .quad 0                     /* setup_data */
    .org 0x258
    .quad 0x100000              /* pref_address */
    .long _init_size            /* init_size: the kernel with its .bss */
    .long 0                     /* handover_offset */
    .long 0                     /* kernel_info_offset */
hdr_end:
    .org (4 + 1) * 512          /* the rest of the setup area */
