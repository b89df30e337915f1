"""Volumes and disks on the host: directories, ext4 image files on loop devices, snapshot copies and layers."""
