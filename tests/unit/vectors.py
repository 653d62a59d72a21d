"""Published test data shared by unit tests."""

# mixlib-authentication's spec key: chef/mixlib-authentication,
# spec/mixlib/authentication/mixlib_authentication_spec.rb (Apache-2.0 test data).
SPEC_PRIVATE_KEY_PEM = """\
-----BEGIN RSA PRIVATE KEY-----
MIIEpAIBAAKCAQEA0ueqo76MXuP6XqZBILFziH/9AI7C6PaN5W0dSvkr9yInyGHS
z/IR1+4tqvP2qlfKVKI4CP6BFH251Ft9qMUBuAsnlAVQ1z0exDtIFFOyQCdR7iXm
jBIWMSS4buBwRQXwDK7id1OxtU23qVJv+xwEV0IzaaSJmaGLIbvRBD+qatfUuQJB
MU/04DdJIwvLtZBYdC2219m5dUBQaa4bimL+YN9EcsDzD9h9UxQo5ReK7b3cNMzJ
BKJWLzFBcJuePMzAnLFktr/RufX4wpXe6XJxoVPaHo72GorLkwnQ0HYMTY8rehT4
mDi1FI969LHCFFaFHSAaRnwdXaQkJmSfcxzCYQIDAQABAoIBAQCW3I4sKN5B9jOe
xq/pkeWBq4OvhW8Ys1yW0zFT8t6nHbB1XrwscQygd8gE9BPqj3e0iIEqtdphbPmj
VHqTYbC0FI6QDClifV7noTwTBjeIOlgZ0NSUN0/WgVzIOxUz2mZ2vBZUovKILPqG
TOi7J7RXMoySMdcXpP1f+PgvYNcnKsT72UcWaSXEV8/zo+Zm/qdGPVWwJonri5Mp
DVm5EQSENBiRyt028rU6ElXORNmoQpVjDVqZ1gipzXkifdjGyENw2rt4V/iKYD7V
5iqXOsvP6Cemf4gbrjunAgDG08S00kiUgvVWcdXW+dlsR2nCvH4DOEe3AYYh/aH8
DxEE7FbtAoGBAPcNO8fJ56mNw0ow4Qg38C+Zss/afhBOCfX4O/SZKv/roRn5+gRM
KRJYSVXNnsjPI1plzqR4OCyOrjAhtuvL4a0DinDzf1+fiztyNohwYsW1vYmqn3ti
EN0GhSgE7ppZjqvLQ3f3LUTxynhA0U+k9wflb4irIlViTUlCsOPkrNJDAoGBANqL
Q+vvuGSsmRLU/Cenjy+Mjj6+QENg51dz34o8JKuVKIPKU8pNnyeLa5fat0qD2MHm
OB9opeQOcw0dStodxr6DB3wi83bpjeU6BWUGITNiWEaZEBrQ0aiqNJJKrrHm8fAZ
9o4l4oHc4hI0kYVYYDuxtKuVJrzZiEapTwoOcYiLAoGBAI/EWbeIHZIj9zOjgjEA
LHvm25HtulLOtyk2jd1njQhlHNk7CW2azIPqcLLH99EwCYi/miNH+pijZ2aHGCXb
/bZrSxM0ADmrZKDxdB6uGCyp+GS2sBxjEyEsfCyvwhJ8b3Q100tqwiNO+d5FCglp
HICx2dgUjuRVUliBwOK93nx1AoGAUI8RhIEjOYkeDAESyhNMBr0LGjnLOosX+/as
qiotYkpjWuFULbibOFp+WMW41vDvD9qrSXir3fstkeIAW5KqVkO6mJnRoT3Knnra
zjiKOITCAZQeiaP8BO5o3pxE9TMqb9VCO3ffnPstIoTaN4syPg7tiGo8k1SklVeH
2S8lzq0CgYAKG2fljIYWQvGH628rp4ZcXS4hWmYohOxsnl1YrszbJ+hzR+IQOhGl
YlkUQYXhy9JixmUUKtH+NXkKX7Lyc8XYw5ETr7JBT3ifs+G7HruDjVG78EJVojbd
8uLA+DdQm5mg4vd1GTiSK65q/3EeoBlUaVor3HhLFki+i9qpT8CBsg==
-----END RSA PRIVATE KEY-----
"""

# client-knife.md §A.2: the reference client's messages for fixed inputs (byte-exact)
KEY = b"01234567890123456789012345678901"
T = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
INCARNATION = "b4c1a7a6-1111-4222-8333-444455556666"

VECTOR_HEARTBEAT = (
    b'{"node":"node1","client":"host1","protocol_version":"2.0","org":"myorg","type":"heartbeat",'
    b'"sequence":1,"timestamp":"Wed, 21 Oct 2015 07:28:00 GMT",'
    b'"incarnation_id":"b4c1a7a6-1111-4222-8333-444455556666","job_state":"idle","job_id":null}'
)
VECTOR_SUCCEEDED = (
    b'{"node":"node1","client":"host1","protocol_version":"2.0","org":"myorg","type":"succeeded",'
    b'"sequence":2,"timestamp":"Wed, 21 Oct 2015 07:28:00 GMT",'
    b'"incarnation_id":"b4c1a7a6-1111-4222-8333-444455556666","job_id":"abc123",'
    b'"stdout":"out\\n","stderr":""}'
)
VECTOR_ABORTED = (
    b'{"node":"node1","client":"host1","protocol_version":"2.0","org":"myorg","type":"aborted",'
    b'"sequence":3,"timestamp":"Wed, 21 Oct 2015 07:28:00 GMT",'
    b'"incarnation_id":"b4c1a7a6-1111-4222-8333-444455556666","job_id":null}'
)
