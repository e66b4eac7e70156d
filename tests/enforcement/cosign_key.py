#!/usr/bin/env python3
# Writes a private key (PEM, PKCS#8 or SEC1) in cosign's encrypted format:
# scrypt (N=32768, r=8, p=1) + NaCl secretbox around the PKCS#8 DER, in a go-tuf
# JSON envelope, base64 inside "ENCRYPTED COSIGN PRIVATE KEY" armor.
# Usage: cosign_key.py KEY.pem PASSPHRASE > KEY.cosign
import base64, json, os, sys, hashlib
from cryptography.hazmat.primitives import serialization
import nacl.secret, nacl.utils
key = serialization.load_pem_private_key(open(sys.argv[1], 'rb').read(), None)
der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
salt = os.urandom(32)
k = hashlib.scrypt(sys.argv[2].encode(), salt=salt, n=32768, r=8, p=1, maxmem=2**26, dklen=32)
nonce = nacl.utils.random(24)
ct = nacl.secret.SecretBox(k).encrypt(der, nonce).ciphertext
b = lambda x: base64.b64encode(x).decode()
env = {"kdf": {"name": "scrypt", "params": {"N": 32768, "r": 8, "p": 1}, "salt": b(salt)},
       "cipher": {"name": "nacl/secretbox", "nonce": b(nonce)}, "ciphertext": b(ct)}
body = base64.b64encode(json.dumps(env).encode()).decode()
lines = [body[i:i+64] for i in range(0, len(body), 64)]
sys.stdout.write("-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END ENCRYPTED COSIGN PRIVATE KEY-----\n")
